import dataclasses
import hashlib
import json
import random

import pytest
import torch
from transformer_lens import HookedTransformer

import ipgkit
from ipgkit.errors import IpgkitError
from ipgkit.io import Checkpoint
from ipgkit.models import training
from ipgkit.models.arith import arith_config
from ipgkit.models.tokenizer import build_char_tokenizer
from ipgkit.models.training import TrainingConfig, batch_for_step, train_model, training_logits


def test_training_forward_equals_hooked_forward():
    model = HookedTransformer(arith_config(n_layers=2, d_model=64, d_head=16, rotary_dim=16))
    tokens, _ = batch_for_step(
        0, TrainingConfig(batch_size=4, pool_batches=2), build_char_tokenizer()
    )
    with torch.no_grad():
        torch.testing.assert_close(training_logits(model, tokens), model(tokens), atol=1e-4, rtol=0)


def test_batches_are_deterministic_and_mask_exactly_the_completion():
    config, tokenizer = TrainingConfig(batch_size=8, pool_batches=2), build_char_tokenizer()
    tokens, weights = batch_for_step(3, config, tokenizer)
    again, _ = batch_for_step(3, config, tokenizer)
    assert torch.equal(tokens, again)
    assert set(weights.unique().tolist()) == {0.0, 1.0}
    for row, row_weights in zip(tokens, weights, strict=True):
        text = tokenizer.decode(row.tolist())
        predicted = tokenizer.decode(row[1:][row_weights > 0].tolist())
        assert predicted.endswith("<eos>")
        prompt_end = (
            text.index("A:\n") + 3
            if text.startswith("<bos>Q:")
            else text.index("Intervention:\n") + 14
        )
        assert text[prompt_end:].replace("<pad>", "") == predicted


@pytest.mark.parametrize(("fix_fraction", "kinds"), [(0.5, {"fix", "table"}), (0.0, {"table"})])
def test_comparison_examples_train_marks_verdicts_and_block_only(fix_fraction, kinds):
    config = TrainingConfig(
        batch_size=16,
        pool_batches=1,
        verifier_fraction=1.0,
        verifier_format="compare",
        mark_weight=2.5,
        fix_fraction=fix_fraction,
    )
    tokenizer = build_char_tokenizer()
    tokens, weights = batch_for_step(0, config, tokenizer)
    seen = set()
    for row, row_weights in zip(tokens, weights, strict=True):
        targets = tokenizer.convert_ids_to_tokens(row[1:].tolist())
        text = "".join(t if len(t) == 1 else "\0" for t in targets)
        expected = [0.0] * len(text)
        end = text.index("\0") + 1  # through EOS
        if text.startswith("Fix.\n"):
            # a fix example: the prompt given, 1 on the block and EOS
            seen.add("fix")
            block = text.index("<intervention>")
            expected[block:end] = [1.0] * (end - block)
            step = text.split("\n")[2]  # "Step k: <attempt step>|<reference step>"
            assert text[block:end].startswith(
                f'<intervention>{{"location": {step[5:].split(":")[0]}'
            )
        else:
            # a table: "k | " + (attempt char, reference char, mark)* + " " + verdict per line,
            # the flagged line's pairs after its "^" unmarked; 1 on EOS (and on the block after
            # the table, with fix_fraction 0); 0 elsewhere
            seen.add("table")
            start = text.index("reference:\n") + 11
            table_end = text.index("<intervention>") if not fix_fraction else end - 1
            for line_start, line in _lines(text[start:table_end], start):
                body_start = line_start + line.index(" | ") + 3
                body = line[line.index(" | ") + 3 : -2]
                for i in range(2, len(body), 3):
                    expected[body_start + i] = 2.5
                    if body[i] == "^":
                        break
                expected[line_start + len(line) - 1] = 2.5
            expected[table_end:end] = [1.0] * (end - table_end)
            assert ("<intervention>" in text) == (not fix_fraction)
            assert {text[i] for i, w in enumerate(expected) if w == 2.5} <= set(".^=!")
        assert row_weights.tolist() == expected
    assert seen == kinds


def _lines(table: str, offset: int):
    """(start index, line without its newline) of each line of ``table``."""
    position = offset
    for line in table.splitlines():
        yield position, line
        position += len(line) + 1


def test_training_examples_fit_the_context():
    rng, config = random.Random(0), TrainingConfig(verifier_fraction=1.0)
    lengths = [
        sum(len(text) for text, _ in training.training_example(rng, config, max_tokens=300)) + 2
        for _ in range(300)
    ]
    assert max(lengths) <= 300
    assert min(lengths) < 200  # short ones are kept, only over-long ones redrawn


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    config = TrainingConfig(
        steps=4, batch_size=4, pool_batches=2, checkpoint_every=2, warmup_steps=2
    )
    train_model(config, tmp_path / "straight", progress=False)
    straight = ipgkit.load_model(str(tmp_path / "straight"))

    real_batch = training.batch_for_step

    def crash_at_step_3(step, *args):
        if step == 3:
            raise KeyboardInterrupt
        return real_batch(step, *args)

    monkeypatch.setattr(training, "batch_for_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_model(config, tmp_path / "resumed", progress=False)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    monkeypatch.setattr(training, "batch_for_step", real_batch)
    train_model(config, tmp_path / "resumed", progress=False)
    resumed = ipgkit.load_model(str(tmp_path / "resumed"))
    # not bitwise: two uninterrupted runs already differ by ~1e-7 (the fused CPU attention kernel's
    # threaded reductions); a wrong resume (a skipped or repeated step) moves weights by ~1e-3
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        if a.is_floating_point() and a.isfinite().all():
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)
    with pytest.raises(
        IpgkitError, match=r"training checkpoint of another run \(differs in \['config'\]"
    ):
        other = {"config": dataclasses.asdict(dataclasses.replace(config, lr=1.0))}
        Checkpoint(tmp_path / "resumed" / "checkpoint.pt", other).save({})
        train_model(config, tmp_path / "resumed", progress=False)


def test_training_can_start_from_saved_weights(tmp_path):
    first = TrainingConfig(steps=2, batch_size=4, pool_batches=1, warmup_steps=1)
    train_model(first, tmp_path / "first", progress=False)
    then = dataclasses.replace(
        first,
        seed=5,  # a fresh start would draw other weights
        lr=1e-9,
        init_from=str(tmp_path / "first"),
        verifier_format="compare",
        verifier_fraction=1.0,
    )
    train_model(then, tmp_path / "then", progress=False)
    start, tuned = (ipgkit.load_model(str(tmp_path / name)) for name in ("first", "then"))
    for (name, a), b in zip(
        start.model.state_dict().items(), tuned.model.state_dict().values(), strict=True
    ):
        if a.is_floating_point() and a.isfinite().all():
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert start.metadata == {"verifier_format": "verifier"}
    assert tuned.metadata == {"verifier_format": "compare"}
    # the fine-tuned folder says what it started from, even once the starting folder is gone
    started = json.loads((tmp_path / "first" / "config.json").read_text())
    recorded = json.loads((tmp_path / "then" / "config.json").read_text())["initialised_from"]
    weights = (tmp_path / "first" / "model.safetensors").read_bytes()
    assert recorded == {
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "training": started["training"],
        "training_seconds": started["training_seconds"],
    }
    assert "initialised_from" not in started
