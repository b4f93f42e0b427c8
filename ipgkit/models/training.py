"""Training the embedded reasoning model from scratch (``ipgkit train-model``).

Data is generated on the fly from the training buckets of both arithmetic families, plus a share of
InT verification examples (problem, reference, numbered failed attempt -> intervention block). The
batch at step s is a pure function of (seed, s), so a resumed run replays exactly the same data.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from ipgkit.determinism import deterministic_algorithms
from ipgkit.io import Checkpoint
from ipgkit.models.arith import arith_config, arith_prompt, load_arith, save_arith
from ipgkit.models.tokenizer import build_char_tokenizer
from ipgkit.progress import tqdm
from ipgkit.tasks import arith
from ipgkit.tasks.base import split_lines
from ipgkit.tasks.comparison import comparison_prompt, comparison_rows, fix_prompt
from ipgkit.tasks.verification import first_divergence, format_intervention, verifier_prompt


def _mixed_failed_attempt(rng: random.Random, problem) -> list[str]:
    make = arith.make_varied_failed_attempt if rng.random() < 0.5 else arith.make_failed_attempt
    return make(rng, problem)


FAILED_ATTEMPTS = {
    "one-slip": arith.make_failed_attempt,
    "varied": arith.make_varied_failed_attempt,
    "mixed": _mixed_failed_attempt,
}


@dataclass
class TrainingConfig:
    """Settings of ``ipgkit train-model``.

    The defaults reproduce the first of the shipped model's three stages (reasoning, with 15% of
    examples in the block verifier format); two fine-tuning stages from it (``init_from``) teach
    the comparison verifier. The shipped ``config.json`` holds the last stage's settings and, under
    ``initialised_from``, each earlier stage's, nested; the README gives the three commands.

    Attributes:
        steps: optimiser steps. At this compute the smallest model with the most steps wins.
        batch_size: sequences per step.
        lr: peak AdamW learning rate, reached after ``warmup_steps`` then cosine-decayed.
        min_lr_ratio: the cosine schedule's floor, as a fraction of ``lr``.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay.
        verifier_fraction: share of examples in the InT verifier format.
        verifier_format: ``"verifier"`` (the InT block prompt, the first stage) or
            ``"compare"`` (the comparison table of :mod:`ipgkit.tasks.comparison`, whose marks
            and verdicts carry ``mark_weight``).
        mark_weight: loss weight of the comparison format's marks and verdicts, relative to 1
            for every other trained character: the dense signal that teaches where the first
            difference is.
        failed_attempts: how the verifier examples' failed attempts are made: ``"one-slip"``
            (``arith.make_failed_attempt``, the first stage), ``"varied"`` (a slip, a
            skipped or a swapped step: ``arith.make_varied_failed_attempt``) or ``"mixed"``
            (either, half and half).
        fix_fraction: share of the comparison examples that teach the fix: the fix prompt
            (the question and the flagged step of attempt and reference,
            :func:`~ipgkit.tasks.comparison.fix_prompt`) followed by the intervention block; the
            others are comparison tables, which end after the flagged row. 0: no fix examples and
            no random draw for them, the block following the table instead (the layout of the
            shipped model's second stage).
        no_reference_fraction: share of the verifier examples whose prompt has no reference
            solution, so that verification without the reference is measured on a format the
            model knows rather than on an unseen one (0: none, and no random draw for it); these
            are in the block format whatever ``verifier_format`` says (a comparison needs the
            reference).
        init_from: a weights folder (as ``load_arith`` reads) to start from instead of random
            weights, e.g. to fine-tune the shipped model into a new format; None: from scratch.
        seed: seeds the weights and the data stream.
        pool_batches: batches drawn together and grouped by length (less padding).
        checkpoint_every: steps between resumable checkpoints.
        threads: torch CPU threads.
    """

    steps: int = 2400
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 30
    weight_decay: float = 0.05
    verifier_fraction: float = 0.15
    verifier_format: Literal["verifier", "compare"] = "verifier"
    mark_weight: float = 3.0
    fix_fraction: float = 0.5
    failed_attempts: Literal["one-slip", "varied", "mixed"] = "one-slip"
    no_reference_fraction: float = 0.0
    init_from: str | None = None
    seed: int = 0
    pool_batches: int = 16
    checkpoint_every: int = 250
    threads: int = 2


def training_example(
    rng: random.Random, config: TrainingConfig, max_tokens: int
) -> list[tuple[str, float]]:
    """One example of the training mix as (text, loss weight) pieces (0: given, not trained),
    redrawn until BOS + text + EOS fits in ``max_tokens`` (one token per character)."""
    # loss weight by a comparison piece's role (None: the table's given characters)
    weights = {None: 0.0, "mark": config.mark_weight, "verdict": config.mark_weight}
    while True:
        difficulty = arith.TRAINING[0] if rng.random() < 0.75 else arith.TRAINING[1]
        family = rng.choice(arith.FAMILIES)
        problem = arith.make_problem(family, rng, difficulty, "train", bucket="train")
        if rng.random() < config.verifier_fraction:
            make = FAILED_ATTEMPTS[config.failed_attempts]
            attempt = make(rng, problem)
            reference = split_lines(problem.reference)
            error = first_divergence(reference, attempt)
            block = format_intervention(error)
            blind = config.no_reference_fraction and rng.random() < config.no_reference_fraction
            if config.verifier_format == "compare" and not blind:
                if config.fix_fraction and rng.random() < config.fix_fraction:
                    fix = fix_prompt(problem.question, error.location, attempt, reference)
                    pieces = [(fix, 0.0), (block, 1.0)]
                else:
                    rows = comparison_rows(attempt, reference)
                    pieces = [(comparison_prompt(problem.question), 0.0)]
                    pieces += [(text, weights[role]) for text, role in rows]
                    if not config.fix_fraction:  # the earlier layout: the block after the table
                        pieces.append((block, 1.0))
            else:
                shown = None if blind else problem.reference
                pieces = [(verifier_prompt(problem.question, shown, attempt), 0.0), (block, 1.0)]
        else:
            pieces = [(arith_prompt(problem.question), 0.0), (problem.reference, 1.0)]
        if sum(len(text) for text, _ in pieces) + 2 <= max_tokens:
            return pieces


def batch_for_step(
    step: int, config: TrainingConfig, tokenizer, max_tokens: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [batch, pos] (right-padded) and the loss weight of each predicted position
    [batch, pos-1] (0 where nothing is trained: prompts, given table text, padding)."""
    block, offset = divmod(step, config.pool_batches)
    rng = random.Random(f"{config.seed}:block:{block}")
    rows = []
    for _ in range(config.batch_size * config.pool_batches):
        ids, weights = [tokenizer.bos_token_id], []
        for text, weight in training_example(rng, config, max_tokens):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            weights += [weight] * len(piece)
        rows.append(([*ids, tokenizer.eos_token_id], [*weights, 1.0]))
    rows.sort(key=lambda row: len(row[0]))
    batches = [rows[i : i + config.batch_size] for i in range(0, len(rows), config.batch_size)]
    rng.shuffle(batches)
    chosen = batches[offset]
    length = max(len(ids) for ids, _ in chosen)
    tokens = torch.full((len(chosen), length), tokenizer.pad_token_id, dtype=torch.long)
    loss_weights = torch.zeros((len(chosen), length - 1))
    for i, (ids, weights) in enumerate(chosen):
        tokens[i, : len(ids)] = torch.tensor(ids)
        loss_weights[i, : len(weights)] = torch.tensor(weights)
    return tokens, loss_weights


def training_logits(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Logits [batch, pos, vocab] of ``model`` on right-padded ``tokens``, for pretraining only.

    TransformerLens 3.9 materialises and masks the full attention matrix; this pass reuses the
    model's
    own submodules (LayerNorms, rotary, MLP, unembed) but computes attention with PyTorch's fused
    causal kernel, which makes from-scratch training 1.5x faster on CPU. It runs no hooks, so every
    ipgkit pipeline (sampling, scoring, attribution, steering, SFT, GRPO) uses the hooked forward;
    a test checks both give the same logits.
    """
    resid = model.embed(tokens)
    for block in model.blocks:
        attn = block.attn
        x = block.ln1(resid)
        q, k, v = (
            torch.einsum("bpd,hde->bhpe", x, weight) + bias[:, None, :]
            for weight, bias in ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V))
        )
        # TransformerLens rotates [batch, pos, head, d_head]
        q = attn.apply_rotary(q.transpose(1, 2), 0, None).transpose(1, 2)
        k = attn.apply_rotary(k.transpose(1, 2), 0, None).transpose(1, 2)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / attn.attn_scale)
        resid = resid + torch.einsum("bhpe,hed->bpd", z, attn.W_O) + attn.b_O
        resid = resid + block.mlp(block.ln2(resid))
    return model.unembed(model.ln_final(resid))


def learning_rate(step: int, config: TrainingConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def lineage(weights_dir: str | Path) -> dict:
    """What a fine-tuned model started from: the starting folder's own training record (nested
    when it was itself fine-tuned) and the SHA-256 of its weights, so that the recipe of a model
    built in stages can be read from its ``config.json`` even after the starting folder is gone."""
    weights_dir = Path(weights_dir)
    recorded = json.loads((weights_dir / "config.json").read_text())
    digest = hashlib.sha256((weights_dir / "model.safetensors").read_bytes()).hexdigest()
    keep = ("training", "training_seconds", "initialised_from")
    return {"weights_sha256": digest, **{k: recorded[k] for k in keep if k in recorded}}


def train_model(config: TrainingConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Train the embedded model; checkpoints in ``out_dir`` make an interrupted run resumable.

    Returns the directory holding ``config.json`` and ``model.safetensors`` (``out_dir``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    tokenizer = build_char_tokenizer()
    if config.init_from is None:
        model = HookedTransformer(arith_config(seed=config.seed))
    else:
        model = load_arith(config.init_from).model
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay
    )
    log_path = out_dir / "training_log.jsonl"
    store = Checkpoint(out_dir / "checkpoint.pt", {"config": asdict(config)}, "training checkpoint")
    start_step, elapsed = 0, 0.0
    state = store.load()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step, elapsed = state["step"], state["elapsed"]
    model.train()
    started = time.perf_counter() - elapsed
    bar = tqdm(
        range(start_step, config.steps),
        initial=start_step,
        total=config.steps,
        desc="train-model",
        disable=not progress,
    )
    running = None
    for step in bar:
        tokens, loss_weights = batch_for_step(step, config, tokenizer, model.cfg.n_ctx)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        logits = training_logits(model, tokens)[:, :-1]
        losses = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
        loss = (losses * loss_weights).sum() / loss_weights.sum()
        optimizer.zero_grad(set_to_none=True)
        with deterministic_algorithms(loss.device):
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}")
        if (step + 1) % 50 == 0:
            with log_path.open("a") as log:
                record = {
                    "step": step + 1,
                    "loss": running,
                    "seconds": time.perf_counter() - started,
                }
                log.write(json.dumps(record) + "\n")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            store.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step + 1,
                    "elapsed": time.perf_counter() - started,
                }
            )
    model.eval()
    seconds = time.perf_counter() - started
    record = {"training": asdict(config), "training_seconds": round(seconds, 1)}
    if config.init_from is not None:
        record["initialised_from"] = lineage(config.init_from)
    save_arith(model, out_dir, record)
    store.path.unlink(missing_ok=True)
    return out_dir
