"""The bad-input catalogue: every case raises an error that names the problem, and leaves the
files around it as they were (nothing written, nothing lost).

The README's "Bad input" table lists these cases with the messages they produce; print it with
``python -m tests.test_bad_inputs``.
"""

import hashlib
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

import ipgkit
from ipgkit.components import mlp_neurons, resid_neurons
from ipgkit.errors import (
    DataFormatError,
    HookNameError,
    IpgkitError,
    RewardError,
    ZeroSignalWarning,
)
from ipgkit.experiments.workspace import Workspace
from ipgkit.saes import attach_saes, sae_features
from ipgkit.tasks import load
from ipgkit.tasks.base import Problem
from tests.conftest import tiny_policy

CATALOGUE: list[tuple[str, type[Exception], str, Callable]] = []


def case(name: str, error: type[Exception], message: str):
    """Register a case: ``setup(folder, policy)`` prepares files and returns the failing call."""

    def register(setup):
        CATALOGUE.append((name, error, message, setup))
        return setup

    return register


GOOD_ROW = '{"question": "q", "answer": "1+1=2\\n#### 2"}\n'


@case("malformed JSONL line", DataFormatError, r"data\.jsonl:2: malformed JSON")
def _malformed(folder, policy):
    (folder / "data.jsonl").write_text(GOOD_ROW + '{"question": "q", \n')
    return lambda: load("gsm8k", path=folder / "data.jsonl")


@case("empty data file", DataFormatError, r"data\.jsonl holds no rows")
def _empty(folder, policy):
    (folder / "data.jsonl").write_text("\n")
    return lambda: load("gsm8k", path=folder / "data.jsonl")


@case("data file in another encoding (Latin-1)", DataFormatError, r"is not UTF-8 text")
def _encoding(folder, policy):
    (folder / "data.jsonl").write_bytes(GOOD_ROW.replace("q", "caf\u00e9").encode("latin-1"))
    return lambda: load("gsm8k", path=folder / "data.jsonl")


@case("record without a required field", DataFormatError, r"data\.jsonl:1: missing field")
def _missing_field(folder, policy):
    (folder / "data.jsonl").write_text('{"question": "q"}\n')
    return lambda: load("gsm8k", path=folder / "data.jsonl")


@case("data path that does not exist", DataFormatError, r"GSM8K data not found at")
def _no_data(folder, policy):
    return lambda: load("gsm8k", path=folder / "nowhere")


def _raising(prompts, completions, **_):
    return [1 / 0 for _ in completions]


def _nan(prompts, completions, **_):
    return [math.nan for _ in completions]


def _short(prompts, completions, **_):
    return [1.0]


@case("reward function that raises", RewardError, r"reward '_raising' raised ZeroDivisionError")
def _reward_raises(folder, policy):
    return lambda: ipgkit.sample(policy, ["1+1"], n=2, max_new_tokens=2, reward=_raising)


@case("reward function that returns NaN", RewardError, r"'_nan' returned non-finite values")
def _reward_nan(folder, policy):
    return lambda: ipgkit.sample(policy, ["1+1"], n=2, max_new_tokens=2, reward=_nan)


@case(
    "reward function that returns the wrong length",
    RewardError,
    r"'_short' returned 1 values for 2 completions",
)
def _reward_short(folder, policy):
    return lambda: ipgkit.sample(policy, ["1+1"], n=2, max_new_tokens=2, reward=_short)


def _steer_inside(policy, components, gamma):
    def run():
        with ipgkit.steer(policy, components, gamma):
            pass

    return run


@case(
    "component set for another model (layer 7 of a 2-layer model)",
    HookNameError,
    r"blocks\.7\.mlp\.hook_post.*closest",
)
def _other_model(folder, policy):
    return _steer_inside(policy, mlp_neurons(7, [0]), 0.0)


@case(
    "unit index beyond the site's width",
    IpgkitError,
    r"component index 999 is out of range .*width 32",
)
def _out_of_range(folder, policy):
    return _steer_inside(policy, resid_neurons(0, [5, 999]), 0.0)


@case("SAE for another layer", IpgkitError, r"no SAE is spliced at blocks\.1\.hook_resid_post")
def _sae_layer(folder, policy):
    from tests.saes.test_splice import random_sae

    spliced = attach_saes(tiny_policy(), [random_sae(32, 0)])
    return lambda: sae_features(spliced, layer=1)


@case("SAE of another width", IpgkitError, r"d_in = 64.*width 32")
def _sae_width(folder, policy):
    from tests.saes.test_splice import random_sae

    return lambda: attach_saes(tiny_policy(), [random_sae(64, 0)])


@case("gamma negative", IpgkitError, r"gamma must be a finite number >= 0, got -0\.5")
def _gamma_negative(folder, policy):
    return _steer_inside(policy, resid_neurons(0, [1]), -0.5)


@case("gamma NaN", IpgkitError, r"gamma must be a finite number >= 0, got nan")
def _gamma_nan(folder, policy):
    return _steer_inside(policy, resid_neurons(0, [1]), math.nan)


@case("n_steps = 0", IpgkitError, r"n_steps must be a positive integer, got 0")
def _no_steps(folder, policy):
    return lambda: ipgkit.ipg(policy, ["1+1"], resid_neurons(0), _nan, n_steps=0)


@case(
    "more rollouts in a batch than memory allows",
    IpgkitError,
    r"a sampling batch of 100000000 rows .* lower batch_size",
)
def _too_many_rollouts(folder, policy):
    return lambda: ipgkit.sample(policy, ["1+1"], n=10**8, batch_size=10**8, max_new_tokens=8)


@case(
    "prompt that alone fills the context",
    IpgkitError,
    r"prompt of 408 tokens .*fills the whole context .*on its own.*shorten the prompt"
    r"(?!.*max_new_tokens)",
)
def _too_long(folder, policy):
    return lambda: ipgkit.sample(policy, ["1+" * 200], max_new_tokens=8)


@case(
    "prompt + max_new_tokens longer than the context",
    IpgkitError,
    r"prompt of 108 tokens .* \+ max_new_tokens=64 exceeds the context.*lower max_new_tokens",
)
def _budget_too_long(folder, policy):
    return lambda: ipgkit.sample(policy, ["1+" * 50], max_new_tokens=64)


@case(
    "HookedTransformer without a tokenizer where a Policy is expected",
    IpgkitError,
    r"this HookedTransformer has no tokenizer .* wrap it as ipgkit\.Policy",
)
def _model_without_tokenizer(folder, policy):
    import copy

    bare = copy.deepcopy(policy.model)
    bare.tokenizer = None
    return lambda: ipgkit.sample(bare, ["1+1"], max_new_tokens=2)


@case(
    "tokenizer larger than the model's d_vocab",
    IpgkitError,
    r"tokenizer of 'small' has \d+ tokens but the model's d_vocab is 16",
)
def _tokenizer_too_large(folder, policy):
    from transformer_lens import HookedTransformer

    from ipgkit.models.arith import arith_config
    from ipgkit.models.tokenizer import build_char_tokenizer

    config = arith_config(
        n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=16, rotary_dim=8, d_vocab=16
    )
    model = HookedTransformer(config)
    return lambda: ipgkit.Policy(model, build_char_tokenizer(), "small", lambda q: q)


def _write_ipg_checkpoint(folder, policy) -> Path:
    """A real IPG checkpoint of a small run (sampled rollouts and scored rows)."""
    checkpoint = folder / "ipg.ckpt"
    with warnings.catch_warnings():  # whether the rollouts carry signal does not matter here
        warnings.simplefilter("ignore", ZeroSignalWarning)
        _ipg_with_checkpoint(policy, checkpoint)
    return checkpoint


def _ipg_with_checkpoint(policy, checkpoint):
    ipgkit.ipg(
        policy,
        _PROBLEMS,
        resid_neurons(0),
        _digits,
        n_rollouts=2,
        n_steps=2,
        max_new_tokens=4,
        temperature=1.0,
        checkpoint=checkpoint,
        progress=False,
    )


_PROBLEMS = [Problem("p0", "1+1", "", ""), Problem("p1", "2+2", "", "")]


def _digits(prompts, completions, **_):
    return [float(sum(c.isdigit() for c in text)) for text in completions]


def _resume_ipg(policy, checkpoint):
    return lambda: ipgkit.ipg(
        policy,
        _PROBLEMS,
        resid_neurons(0),
        _digits,
        n_rollouts=2,
        n_steps=2,
        max_new_tokens=4,
        temperature=1.0,
        checkpoint=checkpoint,
        progress=False,
    )


@case(
    "truncated IPG checkpoint",
    DataFormatError,
    r"ipg\.ckpt is a truncated or corrupt IPG checkpoint .*delete it",
)
def _truncated_checkpoint(folder, policy):
    checkpoint = _write_ipg_checkpoint(folder, policy)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    return _resume_ipg(policy, checkpoint)


class _RunsCode:
    """Unpickling this writes a file: what a malicious shared checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


@case(
    "checkpoint whose pickle would run code",
    DataFormatError,
    r"is not a GRPO checkpoint ipgkit can read safely.*refused without running it",
)
def _malicious_checkpoint(folder, policy):
    import torch

    from ipgkit.tasks import load as load_task
    from ipgkit.training.grpo import GRPOConfig, grpo_train

    out = folder / "grpo"
    out.mkdir()
    # the marker lands inside the snapshotted folder: if the pickle ran, the test would see it
    torch.save({"identity": _RunsCode(str(out / "PWNED"))}, out / "checkpoint.pt")
    task = load_task("arith-chain", split="train", n=2)
    config = GRPOConfig(
        num_generations=2, per_device_train_batch_size=4, max_steps=1, max_completion_length=4
    )
    return lambda: grpo_train(
        policy, task.problems, task.correctness, config, output_dir=out, progress=False
    )


@case(
    "corrupt cached rollouts file",
    DataFormatError,
    r"support-[0-9a-f]+\.pt is a truncated or corrupt cached rollouts file",
)
def _corrupt_rollouts(folder, policy):
    from ipgkit.experiments.workspace import digest

    workspace = Workspace(folder / "ws")
    path = folder / "ws" / "rollouts" / f"support-{digest({'n': 2})}.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 not really a zip archive")
    return lambda: workspace.rollouts("support", {"n": 2}, lambda: None)


@case("truncated results file", DataFormatError, r"scores\.safetensors is not a safetensors file")
def _truncated_result(folder, policy):
    import torch

    from ipgkit.attribution import AttributionResult

    path = folder / "scores.safetensors"
    AttributionResult(resid_neurons(0, [0, 1]), torch.tensor([1.0, 2.0])).save(path)
    path.write_bytes(path.read_bytes()[:40])
    return lambda: AttributionResult.load(path)


@case(
    "results file that is not ipgkit's",
    DataFormatError,
    r"other\.safetensors holds no attribution result: it has no 'ipgkit' metadata \(not written "
    r"by ipgkit\)",
)
def _foreign_result(folder, policy):
    import torch
    from safetensors.torch import save_file

    from ipgkit.attribution import AttributionResult

    save_file({"weight": torch.zeros(3)}, str(folder / "other.safetensors"))
    return lambda: AttributionResult.load(folder / "other.safetensors")


@case(
    "SAE folder with a malformed cfg.json", DataFormatError, r"arith-L0/cfg\.json is not valid JSON"
)
def _malformed_sae(folder, policy):
    from ipgkit.saes import load_sae, save_sae
    from tests.saes.test_splice import random_sae

    sae_dir = save_sae(random_sae(32, 0), folder / "arith-L0")
    (sae_dir / "cfg.json").write_text('{"d_in": 32, "d_sae": ')
    return lambda: load_sae(sae_dir)


@case(
    "output folder holding results of other settings",
    IpgkitError,
    r"holds results of other settings \(differing: layer\).*--overwrite",
)
def _other_settings(folder, policy):
    Workspace(folder / "run", {"layer": 2})
    (folder / "run" / "evaluations.jsonl").write_text('{"key": "k"}\n')
    return lambda: Workspace(folder / "run", {"layer": 3})


@case(
    "hub model name while offline",
    IpgkitError,
    r"'Qwen/Qwen2\.5-Math-1\.5B-Instruct' needs the Hugging Face hub.*HF_HUB_OFFLINE",
)
def _offline(folder, policy):
    return lambda: ipgkit.load_model("Qwen/Qwen2.5-Math-1.5B-Instruct")


@case("unknown model name", IpgkitError, r"unknown model 'gpt-7'")
def _unknown_model(folder, policy):
    return lambda: ipgkit.load_model("gpt-7")


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def model_state(policy) -> dict:
    """What a failed call could damage on the model: hooks left behind, weights changed, and
    what it samples greedily."""
    import torch

    weights = hashlib.sha1()
    for name, tensor in policy.model.state_dict().items():
        weights.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    hooks = sum(
        len(point.fwd_hooks) + len(point.bwd_hooks) for point in policy.model.hook_dict.values()
    )
    with torch.no_grad():
        greedy = ipgkit.sample(policy, ["12+7"], max_new_tokens=6).completion_ids.tolist()
    return {"weights": weights.hexdigest(), "hooks": hooks, "greedy": greedy}


def assert_nothing_changed(before: dict, after: dict) -> None:
    for what in before:
        assert after[what] == before[what], f"the failed call changed the {what}"


def state_of(folder: Path, policy) -> dict:
    return {"files": snapshot(folder), **model_state(policy)}


@pytest.mark.parametrize(
    ("name", "error", "message", "setup"), CATALOGUE, ids=[c[0] for c in CATALOGUE]
)
def test_bad_input_is_named_and_nothing_is_written_or_lost(
    name, error, message, setup, tmp_path, policy
):
    call = setup(tmp_path, policy)
    before = state_of(tmp_path, policy)
    with pytest.raises(error, match=message) as raised:
        call()
    assert "Traceback" not in str(raised.value)
    assert_nothing_changed(before, state_of(tmp_path, policy))


def test_the_nothing_changed_check_catches_damage(tmp_path):
    """Each kind of damage a failed call could do makes the check fail."""
    import torch

    policy = tiny_policy(seed=3)
    (tmp_path / "kept.txt").write_text("data")
    before = state_of(tmp_path, policy)

    def leave_a_hook():
        policy.model.blocks[0].hook_resid_post.add_hook(lambda x, hook: x)

    def change_a_weight():
        with torch.no_grad():
            policy.model.blocks[0].mlp.W_in[0, 0] += 1.0

    def stop_at_once():  # neither a hook nor a weight, but the policy samples otherwise
        policy.stop_token_ids = tuple(range(len(policy.tokenizer)))

    damages = [
        ("hooks", leave_a_hook),
        ("weights", change_a_weight),
        ("greedy", stop_at_once),
        ("files", lambda: (tmp_path / "kept.txt").write_text("lost")),
        ("files", lambda: (tmp_path / "new.txt").write_text("written")),
    ]
    for what, damage in damages:
        damage()
        with pytest.raises(AssertionError, match=f"changed the {what}"):
            assert_nothing_changed(before, state_of(tmp_path, policy))
        policy = tiny_policy(seed=3)  # undo: a fresh copy of the same model
        (tmp_path / "kept.txt").write_text("data")
        (tmp_path / "new.txt").unlink(missing_ok=True)
    assert_nothing_changed(before, state_of(tmp_path, policy))


def test_the_readme_lists_every_case():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [name for name, *_ in CATALOGUE if f"| {name} |" not in readme]
    assert not missing, f"README's bad-input table lacks {missing}"


if __name__ == "__main__":  # print the README table
    import tempfile

    print("| input | error | message |\n|---|---|---|")
    for name, _error, _message, setup in CATALOGUE:
        with tempfile.TemporaryDirectory() as folder:
            try:
                setup(Path(folder), tiny_policy())()
            except Exception as exc:  # the message as users see it
                text = str(exc).replace(str(folder), "<dir>").replace("|", "\\|")
                print(f"| {name} | `{type(exc).__name__}` | {text} |")
