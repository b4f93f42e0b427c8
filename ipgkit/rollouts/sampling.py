"""Sampling: batched generation with a KV cache under whatever hooks are active, with resume.

:func:`sample` draws ``n`` completions per problem in inference mode; steering and IPG's scaled
path apply to every token, prompt and generated, because the sampler sets the
:class:`~ipgkit.positions.SequenceLayout` the scaling hook reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ipgkit.errors import IpgkitError
from ipgkit.io import Checkpoint
from ipgkit.models.policy import Policy, require_policy
from ipgkit.positions import SequenceLayout, sequence_layout, set_layout_offset
from ipgkit.progress import tqdm
from ipgkit.tasks.base import Problem, RewardFunction

from .data import Rollouts, SamplingConfig, pad_right
from .decode import fast_decoding, final_logits
from .kv_cache import PreallocatedCache, rotate_new_keys_only


def _final_logits(model, tokens, attention_mask, past_kv_cache=None):
    """Logits of the last position only (sampling).

    Unembedding every position would cost [batch, pos, vocab] memory (2.5 GB for a 49k vocabulary
    at 64 x 200): sampling unembeds the last position, scoring the completion positions in blocks
    (:func:`_token_scores`).
    """
    resid = model(
        tokens,
        attention_mask=attention_mask,
        past_kv_cache=past_kv_cache,
        stop_at_layer=model.cfg.n_layers,
    )
    return final_logits(model, resid)


def row_generators(seed: int, problem_ids: Sequence[str], n: int) -> list[torch.Generator]:
    """One generator per row (problem-major, ``n`` rows per problem), seeded by
    (seed, problem id, sample index) alone: ``seeding="problem"``."""
    generators = []
    for problem_id in problem_ids:
        for index in range(n):
            digest = hashlib.sha256(f"{seed}\x00{problem_id}\x00{index}".encode()).digest()
            generators.append(torch.Generator().manual_seed(int.from_bytes(digest[:8], "little")))
    return generators


def choose_tokens(
    logits: Float[Tensor, "batch vocab"],
    config: SamplingConfig,
    generator: torch.Generator | Sequence[torch.Generator],
) -> Int[Tensor, " batch"]:
    """Greedy, or sample after temperature, top-k and top-p filtering (with one generator, or
    one per row)."""
    if config.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = logits.topk(config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if config.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > config.top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    if isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator)[:, 0]
    return torch.cat(
        [
            torch.multinomial(row[None], 1, generator=g)[0]
            for row, g in zip(probs.cpu(), generator, strict=True)
        ]
    )


def generate(
    policy: Policy,
    prompt_ids: Sequence[Sequence[int]],
    config: SamplingConfig,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    reference: bool = False,
) -> tuple[Int[Tensor, "batch new"], Bool[Tensor, "batch new"], Float[Tensor, "batch new"]]:
    """Generate one completion per prompt with a KV cache (inference mode, hooks active).

    Decode steps run through :func:`~ipgkit.rollouts.decode.fast_decoding` (TransformerLens's
    computation without its per-layer overhead, every hook point live); ``reference=True`` runs
    TransformerLens's own forward at every step, what the fast steps are tested against.

    Returns completion ids [batch, new] (pad after the stop token), their mask (stop token
    included) and their log-probabilities at temperature 1.
    """
    model, batch = policy.model, len(prompt_ids)
    if batch == 0:
        raise IpgkitError("no prompts to generate from")
    generator = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    longest = max(len(ids) for ids in prompt_ids)
    check_context(policy, longest, config.max_new_tokens, prompt_ids)
    device = model.cfg.device
    tokens = torch.full((batch, longest), policy.pad_token_id, dtype=torch.long)
    attention = torch.zeros((batch, longest), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        tokens[row, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[row, longest - len(ids) :] = 1
    tokens, attention = tokens.to(device), attention.to(device)
    stop_ids = torch.tensor(policy.stop_token_ids, device=device)
    cache = PreallocatedCache.allocate(model.cfg, device, batch, longest + config.max_new_tokens)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    new_tokens, new_logprobs, alive = [], [], []
    layout = SequenceLayout(generated_start=torch.full((batch,), longest), offset=0)
    fast = contextlib.nullcontext() if reference else fast_decoding(model)
    with torch.inference_mode(), sequence_layout(layout), rotate_new_keys_only(model, cache), fast:
        logits = _final_logits(model, tokens, attention, cache)[:, -1]
        step_mask = torch.ones((batch, 1), dtype=torch.long, device=device)
        for step in range(config.max_new_tokens):
            chosen = choose_tokens(logits, config, generator).to(device)
            logprob = logits.float().log_softmax(-1).gather(-1, chosen[:, None])[:, 0]
            chosen = chosen.masked_fill(finished, policy.pad_token_id)
            alive.append(~finished)  # a row's mask runs up to and including its stop token
            new_tokens.append(chosen)
            new_logprobs.append(logprob.masked_fill(finished, 0.0))
            finished = finished | torch.isin(chosen, stop_ids)
            if bool(finished.all()) or step == config.max_new_tokens - 1:
                break
            set_layout_offset(longest + step)
            logits = _final_logits(model, chosen[:, None], step_mask, cache)[:, -1]
    completion, mask, logprobs = (
        torch.stack(values, dim=1).cpu() for values in (new_tokens, alive, new_logprobs)
    )
    return completion, mask, logprobs


def check_context(policy: Policy, prompt_length: int, new_tokens: int, prompt_ids=None) -> None:
    """Refuse prompts that cannot fit prompt + completion in the model's context window."""
    if prompt_length + new_tokens > policy.n_ctx:
        which = ""
        if prompt_ids is not None:
            longest = max(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
            which = f" (prompt #{longest})"
        if prompt_length >= policy.n_ctx:  # no completion budget can help here
            raise IpgkitError(
                f"prompt of {prompt_length} tokens{which} fills the whole context of "
                f"{policy.name!r} (n_ctx={policy.n_ctx}) on its own, leaving no room to generate: "
                "shorten the prompt, or use a model with a longer context"
            )
        raise IpgkitError(
            f"prompt of {prompt_length} tokens{which} + max_new_tokens={new_tokens} exceeds the "
            f"context of {policy.name!r} (n_ctx={policy.n_ctx}); shorten the prompt or lower "
            "max_new_tokens"
        )


def _available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` (None where it cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(policy: Policy, rows: int, positions: int) -> None:
    """Refuse a sampling batch whose KV cache and logits would not fit in free memory (a clear
    error up front, instead of the machine swapping or the process being killed)."""
    cfg = policy.model.cfg
    kv_heads = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    element = torch.finfo(cfg.dtype).bits // 8
    # keys and values per layer, plus TransformerLens's per-step copy of them (GQA repeat,
    # concatenation) and one row of logits per sequence
    needed = rows * positions * cfg.n_layers * 2 * kv_heads * cfg.d_head * element * 2
    needed += rows * cfg.d_vocab * 4 * 4
    free = _available_bytes(torch.device(cfg.device))
    if free is not None and needed > 0.9 * free:
        raise IpgkitError(
            f"a sampling batch of {rows} rows x {positions} positions needs about "
            f"{needed / 2**30:.1f} GiB (KV cache), but {free / 2**30:.1f} GiB is free on "
            f"{cfg.device}: lower batch_size (rollouts are sampled batch_size rows at a time)"
        )


def sample(
    policy: Policy,
    problems: Sequence[Problem] | Sequence[str],
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    max_new_tokens: int = 256,
    seed: int = 0,
    batch_size: int = 64,
    reward: RewardFunction | None = None,
    progress: bool = True,
    format_prompts: bool = True,
    seeding: Literal["batch", "problem"] = "batch",
    checkpoint: str | os.PathLike | None = None,
) -> Rollouts:
    """Sample ``n`` completions for each problem (or question string) with a KV cache.

    With a ``checkpoint`` file every finished batch (and the generator's state) is saved there
    atomically, and a rerun with the same policy, prompts and settings continues after the last
    saved batch with the same result as an uninterrupted run. Hooks are not part of the
    identity: resume under the same steering.

    Hooks active on ``policy.model`` (e.g. inside :func:`ipgkit.steer`) apply throughout.
    Rows are grouped by problem: rows ``g*n .. g*n+n-1`` answer problem ``g``. Questions go through
    the policy's prompt format unless ``format_prompts=False`` (for ready-made prompts, such as
    InT verification prompts). A tqdm bar shows progress unless ``progress=False``.

    Example:
        >>> rollouts = sample(policy, task.problems[:32], n=8, temperature=0.7,
        ...                   reward=task.correctness)                       # doctest: +SKIP
        >>> rollouts.rewards.mean(), rollouts.frac_reward_zero_std          # doctest: +SKIP
    """
    policy = require_policy(policy, "sample")
    config = SamplingConfig(n, temperature, top_p, top_k, max_new_tokens, seed, batch_size, seeding)
    problems = [
        p if isinstance(p, Problem) else Problem(f"prompt/{i}", p, "", "")
        for i, p in enumerate(problems)
    ]
    if not problems:
        raise IpgkitError("no problems to sample from (empty list)")
    prompts = [
        policy.prompt_format(p.statement) if format_prompts else p.question for p in problems
    ]
    prompt_ids = policy.encode(prompts)
    check_context(policy, max(len(ids) for ids in prompt_ids), max_new_tokens, prompt_ids)
    # sort groups by prompt length so batches carry little padding; rows keep problem order
    order = sorted(range(len(problems)), key=lambda g: len(prompt_ids[g]))
    rows = [g for g in order for _ in range(n)]
    check_memory(policy, min(batch_size, len(rows)), max(map(len, prompt_ids)) + max_new_tokens)
    generated = _generate_rows(policy, problems, prompt_ids, rows, config, progress, checkpoint)
    rollouts = _assemble(policy, problems, prompts, prompt_ids, rows, generated, config)
    return rollouts.with_rewards(reward) if reward is not None else rollouts


def _generate_rows(
    policy, problems, prompt_ids, rows, config: SamplingConfig, progress, checkpoint
):
    """Generate ``rows`` (problem indices) ``batch_size`` at a time, saving each finished batch and
    the generator's state to ``checkpoint`` so that a rerun continues after the last one."""
    batch_size, n = config.batch_size, config.n
    generator = torch.Generator().manual_seed(config.seed)
    per_row = None
    if config.seeding == "problem":
        per_row = row_generators(config.seed, [p.id for p in problems], n)
    store = None
    if checkpoint is not None:
        store = Checkpoint(
            checkpoint, _sampling_identity(policy, prompt_ids, config), "sampling checkpoint"
        )
    saved = store.load() if store is not None else None
    generated: list[tuple[Tensor, Tensor, Tensor]] = []
    if saved is not None:
        generator.set_state(saved["generator"])
        generated = [tuple(batch) for batch in saved["batches"]]
    bar = tqdm(
        total=len(rows),
        initial=min(len(generated) * batch_size, len(rows)),
        desc="sample",
        unit="completion",
        disable=not progress,
    )
    for start in range(len(generated) * batch_size, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch_generator = generator
        if per_row is not None:  # rows[i] is group g's (i mod n)-th sample
            batch_generator = [per_row[g * n + (start + i) % n] for i, g in enumerate(chunk)]
        generated.append(generate(policy, [prompt_ids[g] for g in chunk], config, batch_generator))
        if store is not None:
            store.save({"batches": generated, "generator": generator.get_state()})
        bar.update(len(chunk))
    bar.close()
    return generated


def _assemble(policy, problems, prompts, prompt_ids, rows, generated, config) -> Rollouts:
    """Rollouts from batches generated in ``rows`` order, rows put back in problem order."""
    width = max(ids.shape[1] for ids, _, _ in generated)

    def stacked(part: int, value) -> Tensor:
        return torch.cat([pad_right(pieces[part], width, value) for pieces in generated])

    # rows were generated in prompt-length order; a stable sort by problem restores g*n .. g*n+n-1
    restore = torch.tensor(rows).argsort(stable=True)
    completion_ids = stacked(0, policy.pad_token_id)[restore]
    completion_mask = stacked(1, False)[restore]
    texts = [
        policy.decode(ids[m].tolist())
        for ids, m in zip(completion_ids, completion_mask, strict=True)
    ]
    return Rollouts(
        problems=list(problems),
        prompts=prompts,
        prompt_ids=prompt_ids,
        group_ids=torch.arange(len(problems)).repeat_interleave(config.n),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        sample_logprobs=stacked(2, 0.0)[restore],
        texts=texts,
        config=config,
    )


def _sampling_identity(policy: Policy, prompt_ids, config: SamplingConfig) -> dict:
    """What a sampling checkpoint must match: the policy, every prompt's ids and the settings."""
    prompts = hashlib.sha256(json.dumps(prompt_ids).encode()).hexdigest()
    return {"policy": policy.name, "prompt_ids": prompts, "config": asdict(config)}
