"""Rollouts: batched sampling under active hooks, teacher-forced scoring, group-relative advantages.

Two passes, as in every policy-gradient method:

1. :func:`sample` draws completions with a KV cache in inference mode. Whatever hooks are active on
   the model (steering, IPG's scaled path) apply to every token, prompt and generated.
2. :func:`score_completions` re-runs prompt + completion in one teacher-forced pass and returns the
   per-token log pi(a_t | s_t) and entropy of the completion tokens, with gradient. IPG, GRPO, SFT and
   the NLL/entropy metrics all call this one function (or its chunked form :func:`iter_scores`).

Sampling left-pads prompts; scoring right-pads prompt + completion. Both set a
:class:`~ipgkit.components.SequenceLayout` so that scaling hooks know which positions are generated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from ipgkit.components import SequenceLayout, sequence_layout, set_layout_offset
from ipgkit.errors import IpgkitError
from ipgkit.io import atomic_torch_save, load_torch_state
from ipgkit.memory import MemoryBudget, bounded_passes, checkpoint_in_layout
from ipgkit.models.policy import Policy, require_policy
from ipgkit.tasks.base import Problem, RewardFunction, call_reward, reward_columns

AdvantageMode = Literal["mean_std", "mean", "rloo", "none"]


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are drawn.

    Attributes:
        n: completions per prompt (a GRPO/IPG group).
        temperature: softmax temperature; 0 means greedy decoding.
        top_p: nucleus sampling mass (1.0 disables it). The IPG paper samples at T=0.6, top-p 0.8.
        top_k: keep only the k most likely tokens (None disables it).
        max_new_tokens: longest completion, EOS included.
        seed: seeds the sampler's own generator (global torch RNG is untouched).
        batch_size: rollout rows per sampling batch (prompts x n).
        seeding: ``"batch"``: one generator runs through all batches (the default; the tokens
            depend on which problems are sampled together). ``"problem"``: every row has its own
            generator, seeded by (seed, problem id, sample index), so a problem's completions are
            the same whichever batch, order or shard it is sampled in (needed under torchrun).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    max_new_tokens: int = 256
    seed: int = 0
    batch_size: int = 64
    seeding: Literal["batch", "problem"] = "batch"

    def __post_init__(self) -> None:
        if self.seeding not in ("batch", "problem"):
            raise IpgkitError(f"seeding must be 'batch' or 'problem', got {self.seeding!r}")
        if self.n < 1:
            raise IpgkitError(f"n (completions per prompt) must be >= 1, got {self.n}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise IpgkitError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise IpgkitError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise IpgkitError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise IpgkitError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise IpgkitError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Rollouts:
    """Completions sampled for a list of problems, ``n`` per problem, rows grouped by problem.

    Attributes:
        problems: the G problems, in order.
        prompts: the G prompt texts (after the policy's prompt format).
        prompt_ids: the G prompts' token ids (unpadded, BOS included when the policy uses it).
        group_ids: [R] which problem each row answers (R = G * n, rows of a group are adjacent).
        completion_ids: [R, T] sampled tokens, right-padded with the pad id; EOS included.
        completion_mask: [R, T] True on real completion tokens.
        sample_logprobs: [R, T] log pi(a_t | s_t) at temperature 1 under the sampling-time model.
        texts: the R completion texts (special tokens removed).
        rewards: [R] rewards, once computed (see :meth:`with_rewards`).
        config: the sampling settings used.
    """

    problems: list[Problem]
    prompts: list[str]
    prompt_ids: list[list[int]]
    group_ids: Int[Tensor, " rows"]
    completion_ids: Int[Tensor, "rows completion"]
    completion_mask: Bool[Tensor, "rows completion"]
    sample_logprobs: Float[Tensor, "rows completion"]
    texts: list[str]
    config: SamplingConfig
    rewards: Float[Tensor, " rows"] | None = None
    reward_name: str | None = field(default=None)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def n(self) -> int:
        return self.config.n

    @property
    def completion_lengths(self) -> Int[Tensor, " rows"]:
        """Tokens per completion, EOS included."""
        return self.completion_mask.sum(-1)

    def row_prompt_ids(self) -> list[list[int]]:
        return [self.prompt_ids[g] for g in self.group_ids.tolist()]

    def row_completion_ids(self) -> list[list[int]]:
        return [
            ids[mask].tolist()
            for ids, mask in zip(self.completion_ids, self.completion_mask, strict=True)
        ]

    def select(self, groups: Sequence[int]) -> Rollouts:
        """The rollouts of some problems only (``groups`` index ``problems``), in that order, e.g.
        the first M prompts of a support set: ``rollouts.select(range(M))``."""
        groups = [int(g) for g in groups]
        if not groups:
            raise IpgkitError("select needs at least one problem")
        if min(groups) < 0 or max(groups) >= len(self.problems):
            raise IpgkitError(f"problem indices must be in [0, {len(self.problems)}), got {groups}")
        rows = torch.tensor([g * self.n + k for g in groups for k in range(self.n)])
        return replace(
            self,
            problems=[self.problems[g] for g in groups],
            prompts=[self.prompts[g] for g in groups],
            prompt_ids=[self.prompt_ids[g] for g in groups],
            group_ids=torch.arange(len(groups)).repeat_interleave(self.n),
            completion_ids=self.completion_ids[rows],
            completion_mask=self.completion_mask[rows],
            sample_logprobs=self.sample_logprobs[rows],
            texts=[self.texts[r] for r in rows.tolist()],
            rewards=None if self.rewards is None else self.rewards[rows],
        )

    @classmethod
    def concat(cls, parts: Sequence[Rollouts], pad_id: int) -> Rollouts:
        """Rollouts of several problem lists, one after the other (e.g. the shards of a torchrun
        launch, in rank order); completions are right-padded with ``pad_id`` to the widest part."""
        if not parts:
            raise IpgkitError("concat needs at least one Rollouts")
        if len({part.n for part in parts}) > 1:
            raise IpgkitError(f"cannot concat rollouts with different n: {[p.n for p in parts]}")
        width = max(part.completion_ids.shape[1] for part in parts)

        def joined(name: str, value) -> Tensor:
            return torch.cat([_pad_right(getattr(part, name), width, value) for part in parts])

        sizes = torch.tensor([len(part.problems) for part in parts])
        starts = sizes.cumsum(0) - sizes  # where each part's problems begin in the whole
        rewards = [part.rewards for part in parts]
        return replace(
            parts[0],
            problems=[p for part in parts for p in part.problems],
            prompts=[p for part in parts for p in part.prompts],
            prompt_ids=[p for part in parts for p in part.prompt_ids],
            group_ids=torch.cat(
                [part.group_ids + start for part, start in zip(parts, starts, strict=True)]
            ),
            completion_ids=joined("completion_ids", pad_id),
            completion_mask=joined("completion_mask", False),
            sample_logprobs=joined("sample_logprobs", 0.0),
            texts=[text for part in parts for text in part.texts],
            rewards=None if any(r is None for r in rewards) else torch.cat(rewards),
        )

    def with_rewards(self, reward: RewardFunction) -> Rollouts:
        """A copy with ``rewards`` filled in by a TRL-style reward function (checked for NaN/length)."""
        columns = reward_columns(self.problems, repeats=self.n)
        columns["completion_ids"] = self.row_completion_ids()
        row_prompts = [self.prompts[g] for g in self.group_ids.tolist()]
        values = call_reward(reward, row_prompts, self.texts, **columns)
        name = getattr(reward, "__name__", type(reward).__name__)
        return replace(self, rewards=torch.tensor(values, dtype=torch.float32), reward_name=name)

    def rewards_by_group(self) -> Float[Tensor, "groups n"]:
        if self.rewards is None:
            raise IpgkitError("rollouts have no rewards yet; call .with_rewards(reward_fn)")
        return self.rewards.view(len(self.problems), self.n)

    def advantages(self, mode: AdvantageMode = "mean_std") -> Float[Tensor, " rows"]:
        """Group-relative advantages per row (see :func:`group_advantages`)."""
        return group_advantages(self.rewards_by_group(), mode).reshape(-1)

    @property
    def frac_reward_zero_std(self) -> float:
        """Fraction of problems whose n completions all earned the same reward (no signal)."""
        return float(zero_std_groups(self.rewards_by_group()).float().mean())

    def state_dict(self) -> dict:
        """Plain tensors, lists and strings (loadable with ``torch.load(weights_only=True)``), so an
        interrupted attribution or experiment can resume without resampling."""
        return {
            "problems": [asdict(p) for p in self.problems],
            "prompts": self.prompts,
            "prompt_ids": self.prompt_ids,
            "group_ids": self.group_ids,
            "completion_ids": self.completion_ids,
            "completion_mask": self.completion_mask,
            "sample_logprobs": self.sample_logprobs,
            "texts": self.texts,
            "config": asdict(self.config),
            "rewards": self.rewards,
            "reward_name": self.reward_name,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Rollouts:
        """Inverse of :meth:`state_dict`."""
        fields = dict(state)
        fields["problems"] = [Problem(**p) for p in state["problems"]]
        fields["config"] = SamplingConfig(**state["config"])
        return cls(**fields)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per completion: problem id, sample index, text, length, reward."""
        groups = self.group_ids.tolist()
        return pd.DataFrame(
            {
                "problem_id": [self.problems[g].id for g in groups],
                "sample": [i % self.n for i in range(len(groups))],
                "completion": self.texts,
                "length": self.completion_lengths.tolist(),
                "reward": self.rewards.tolist()
                if self.rewards is not None
                else [None] * len(groups),
            }
        )


# --- advantages ---------------------------------------------------------------------------------


def zero_std_groups(rewards: Float[Tensor, "groups n"]) -> Bool[Tensor, " groups"]:
    """Groups whose rewards are all equal (TRL's ``frac_reward_zero_std`` counts these)."""
    return (rewards.max(-1).values - rewards.min(-1).values).abs() <= 1e-8


def group_advantages(
    rewards: Float[Tensor, "groups n"], mode: AdvantageMode = "mean_std", eps: float = 1e-4
) -> Float[Tensor, "groups n"]:
    """Group-relative advantages, one row of ``n`` rollouts per prompt.

    - ``mean_std`` (GRPO): ``(r - group mean) / (group std + eps)``;
    - ``mean`` (Dr. GRPO): ``r - group mean``;
    - ``rloo`` (leave-one-out): ``r - mean of the other n - 1 rewards`` = ``n / (n - 1) (r - mean)``.
      The only one whose score-function estimate is unbiased: the group mean includes the rollout's
      own reward, which shrinks the expected gradient by ``(n - 1) / n``;
    - ``none``: the raw reward.

    Groups with equal rewards get exactly 0 (except under ``none``).

    Example:
        >>> group_advantages(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), "mean")
        tensor([[ 0.5000, -0.5000],
                [ 0.0000,  0.0000]])
    """
    if rewards.ndim != 2:
        raise IpgkitError(f"rewards must be [groups, n], got shape {tuple(rewards.shape)}")
    if mode == "none":
        return rewards.clone()
    if mode not in ("mean", "mean_std", "rloo"):
        raise IpgkitError(
            f"unknown advantage mode {mode!r}; choose 'mean_std', 'mean', 'rloo' or 'none'"
        )
    n = rewards.shape[1]
    if n < 2:
        raise IpgkitError(f"group-relative advantages need at least 2 rollouts per prompt, got {n}")
    no_signal = zero_std_groups(rewards)[:, None]
    centred = (rewards - rewards.mean(-1, keepdim=True)).masked_fill(no_signal, 0.0)
    if mode == "mean":
        return centred
    if mode == "rloo":
        return centred * (n / (n - 1))
    # divide only where there is signal: with eps = 0 an equal group would give 0 / 0
    scale = rewards.std(-1, keepdim=True).masked_fill(no_signal, 1.0) + eps
    return centred / scale


# --- sampling -----------------------------------------------------------------------------------


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
    return model.unembed(model.ln_final(resid[:, -1:]))


def _final_residual(model, tokens, attention_mask, shared_prefix_layer=None, layout=None):
    """The residual stream after the last block, for every position (teacher forcing)."""
    if shared_prefix_layer is None:
        return model(tokens, attention_mask=attention_mask, stop_at_layer=model.cfg.n_layers)
    return _run_with_shared_prefix(model, tokens, attention_mask, shared_prefix_layer, layout)


def _token_scores(model, resid, targets, with_entropy: bool, position_chunk_size: int):
    """log pi of ``targets`` (and entropy) from final residuals [batch, width, d_model].

    Logits exist for ``position_chunk_size`` positions at a time; with gradient on, each block is
    checkpointed (its logits are recomputed in the backward pass), so memory for a long
    completion is bounded by batch x block x vocab, not batch x completion x vocab.
    """

    def scores_of(resid_block, targets_block):
        logits = model.unembed(model.ln_final(resid_block))
        # at least float32 (half-precision models), float64 models keep their precision
        log_probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
        chosen = log_probs.gather(-1, targets_block[..., None])[..., 0]
        if not with_entropy:
            return chosen, torch.zeros_like(chosen)
        return chosen, -(log_probs.exp() * log_probs).sum(-1)

    width = resid.shape[1]
    if width <= position_chunk_size:
        return scores_of(resid, targets)
    pieces = []
    for start in range(0, width, position_chunk_size):
        block = (
            resid[:, start : start + position_chunk_size],
            targets[:, start : start + position_chunk_size],
        )
        if torch.is_grad_enabled() and resid.requires_grad:
            pieces.append(checkpoint_in_layout(scores_of, *block))
        else:
            pieces.append(scores_of(*block))
    return tuple(torch.cat(parts, dim=1) for parts in zip(*pieces, strict=True))


def _run_with_shared_prefix(model, tokens, attention_mask, layer: int, layout: SequenceLayout):
    """Blocks below ``layer`` once per distinct row, then every row from ``layer`` on.

    Rows count as the same when tokens, attention mask and generation start all agree, so hooks in
    the shared part (which see the distinct rows, under their own layout) act as they would on
    each row.
    """
    start = layout.generated_start.to(tokens.device)
    key = torch.cat([tokens, attention_mask, start[:, None]], dim=1)
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)
    width = tokens.shape[1]
    with sequence_layout(SequenceLayout(distinct[:, -1].cpu())):
        shared = model(
            distinct[:, :width], attention_mask=distinct[:, width : 2 * width], stop_at_layer=layer
        )
    return model(
        shared.index_select(0, inverse),
        start_at_layer=layer,
        attention_mask=attention_mask,
        stop_at_layer=model.cfg.n_layers,
    )


class _PreallocatedEntry(TransformerLensKeyValueCacheEntry):
    """A layer's KV cache that writes into buffers sized for the whole generation.

    TransformerLens's entry concatenates the full cache with each new token (O(length) copying per
    step); this one writes the new keys and values in place and hands out views. For rotary models
    it also keeps the rotated keys (see :func:`_rotate_new_keys_only`).
    """

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        self._keys, self._values, self._length, self.frozen = keys, values, 0, False
        self._rotated, self._rotated_length = torch.empty_like(keys), 0

    @property
    def past_keys(self) -> Tensor:
        return self._keys[:, : self._length]

    @property
    def past_values(self) -> Tensor:
        return self._values[:, : self._length]

    def append(self, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
        end = self._length + new_keys.shape[1]
        self._keys[:, self._length : end] = new_keys
        self._values[:, self._length : end] = new_values
        if not self.frozen:
            self._length = end
        return self._keys[:, :end], self._values[:, :end]


class _PreallocatedCache(TransformerLensKeyValueCache):
    """TransformerLens's KV cache with preallocated per-layer buffers and attention mask."""

    @classmethod
    def allocate(cls, cfg, device, batch: int, capacity: int) -> _PreallocatedCache:
        heads = cfg.n_key_value_heads or cfg.n_heads
        shape = (batch, capacity, heads, cfg.d_head)
        entries = [
            _PreallocatedEntry(
                torch.empty(shape, dtype=cfg.dtype, device=device),
                torch.empty(shape, dtype=cfg.dtype, device=device),
            )
            for _ in range(cfg.n_layers)
        ]
        cache = cls(
            entries=entries,
            previous_attention_mask=torch.empty((batch, 0), dtype=torch.long, device=device),
        )
        cache._mask = torch.zeros((batch, capacity), dtype=torch.long, device=device)
        return cache

    def append_attention_mask(self, attention_mask: Tensor) -> Tensor:
        start = self.previous_attention_mask.shape[1]
        end = start + attention_mask.shape[1]
        self._mask[:, start:end] = attention_mask
        updated = self._mask[:, :end]
        if not self.frozen:
            self.previous_attention_mask = updated
        return updated


@contextlib.contextmanager
def _rotate_new_keys_only(model, cache: _PreallocatedCache) -> Iterator[None]:
    """Rotate each cached key once, not once per generated token.

    TransformerLens 3.9 caches un-rotated keys and re-applies rotary to the whole cache at every
    step and layer: O(length) work per token that dominated decoding. While sampling, each layer's
    ``apply_rotary``, when handed that layer's own key buffer, rotates only the positions appended
    since the last call (TransformerLens's own function, same offsets and mask) and returns the
    stored rotated keys. Any other call (queries, expanded GQA keys) goes to the original.
    """
    if model.cfg.positional_embedding_type != "rotary":
        yield
        return
    patched = []
    for block, entry in zip(model.blocks, cache.entries, strict=True):
        attention = block.attn
        original = attention.apply_rotary

        def apply_rotary(
            x, past_kv_pos_offset=0, attention_mask=None, _original=original, _entry=entry
        ):
            if past_kv_pos_offset != 0 or x.data_ptr() != _entry._keys.data_ptr():
                return _original(x, past_kv_pos_offset, attention_mask)
            start, end = _entry._rotated_length, x.shape[1]
            mask = None if attention_mask is None else attention_mask[:, :end]
            _entry._rotated[:, start:end] = _original(x[:, start:end], start, mask)
            _entry._rotated_length = end
            return _entry._rotated[:, :end]

        attention.apply_rotary = apply_rotary
        patched.append(attention)
    try:
        yield
    finally:
        for attention in patched:
            del attention.apply_rotary


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
) -> tuple[Int[Tensor, "batch new"], Bool[Tensor, "batch new"], Float[Tensor, "batch new"]]:
    """Generate one completion per prompt with a KV cache (inference mode, hooks active).

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
    cache = _PreallocatedCache.allocate(model.cfg, device, batch, longest + config.max_new_tokens)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    new_tokens, new_logprobs, alive = [], [], []
    layout = SequenceLayout(generated_start=torch.full((batch,), longest), offset=0)
    with torch.inference_mode(), sequence_layout(layout), _rotate_new_keys_only(model, cache):
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
    progress: bool = False,
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
    InT verification prompts).

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
    generator = torch.Generator().manual_seed(seed)
    per_row = row_generators(seed, [p.id for p in problems], n) if seeding == "problem" else None
    identity = _sampling_identity(policy, prompt_ids, config)
    generated: list[tuple[Tensor, Tensor, Tensor]] = []
    if checkpoint is not None:
        generated = _saved_batches(Path(checkpoint), identity, generator)
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
        if checkpoint is not None:
            atomic_torch_save(
                {"identity": identity, "batches": generated, "generator": generator.get_state()},
                checkpoint,
            )
        bar.update(len(chunk))
    bar.close()
    width = max(ids.shape[1] for ids, _, _ in generated)

    def stacked(part: int, value) -> Tensor:
        return torch.cat([_pad_right(pieces[part], width, value) for pieces in generated])

    # rows were generated in prompt-length order; a stable sort by problem restores g*n .. g*n+n-1
    restore = torch.tensor(rows).argsort(stable=True)
    completion_ids = stacked(0, policy.pad_token_id)[restore]
    completion_mask = stacked(1, False)[restore]
    sample_logprobs = stacked(2, 0.0)[restore]
    texts = [
        policy.decode(ids[m].tolist())
        for ids, m in zip(completion_ids, completion_mask, strict=True)
    ]
    rollouts = Rollouts(
        problems=list(problems),
        prompts=prompts,
        prompt_ids=prompt_ids,
        group_ids=torch.arange(len(problems)).repeat_interleave(n),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        sample_logprobs=sample_logprobs,
        texts=texts,
        config=config,
    )
    return rollouts.with_rewards(reward) if reward is not None else rollouts


def _sampling_identity(policy: Policy, prompt_ids, config: SamplingConfig) -> str:
    """What a sampling checkpoint must match: the policy, every prompt's ids and the settings."""
    text = json.dumps([policy.name, prompt_ids, asdict(config)])
    return hashlib.sha256(text.encode()).hexdigest()


def _saved_batches(path: Path, identity: str, generator: torch.Generator) -> list:
    """The finished batches of an interrupted :func:`sample` (the generator set to its state after
    them), or none; a checkpoint of other settings is refused rather than mixed in."""
    if not path.exists():
        return []
    saved = load_torch_state(path, "sampling checkpoint")
    if saved["identity"] != identity:
        raise IpgkitError(
            f"{path} holds sampling progress of another run (other policy, prompts or settings); "
            "delete it to start over"
        )
    generator.set_state(saved["generator"])
    return [tuple(batch) for batch in saved["batches"]]


def _pad_right(tensor: Tensor, width: int, value) -> Tensor:
    if tensor.shape[1] == width:
        return tensor
    pad = torch.full((tensor.shape[0], width - tensor.shape[1]), value, dtype=tensor.dtype)
    return torch.cat([tensor, pad], dim=1)


# --- teacher-forced scoring ---------------------------------------------------------------------


@dataclass
class TokenScores:
    """Per-token scores of completions under teacher forcing.

    Attributes:
        logprobs: [batch, completion] log pi(a_t | s_t) (0 where masked), with gradient.
        entropy: [batch, completion] entropy of pi(. | s_t) (0 where masked), or None.
        mask: [batch, completion] True on real completion tokens.
    """

    logprobs: Float[Tensor, "batch completion"]
    entropy: Float[Tensor, "batch completion"] | None
    mask: Bool[Tensor, "batch completion"]

    def sequence_logprobs(self) -> Float[Tensor, " batch"]:
        """log pi(completion | prompt), summed over tokens."""
        return self.logprobs.sum(-1)


def _right_padded(prompts, completions, pad_id: int) -> tuple[Tensor, Tensor]:
    """Prompt + completion rows, right-padded: token ids and attention mask [rows, longest]."""
    total = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    tokens = torch.full((len(prompts), total), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), total), dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        tokens[row, : len(p) + len(c)] = torch.tensor([*p, *c], dtype=torch.long)
        attention[row, : len(p) + len(c)] = 1
    return tokens, attention


def iter_scores(
    policy: Policy,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    chunk_size: int | None = None,
    with_entropy: bool = True,
    shared_prefix_layer: int | None = None,
    position_chunk_size: int = 256,
    memory: MemoryBudget | None = None,
    gradient_from_block: int = -1,
) -> Iterator[tuple[slice, TokenScores]]:
    """Teacher-forced scores chunk by chunk (``chunk_size`` rows each), so callers can backward per
    chunk and keep memory bounded. Yields ``(rows, scores)`` with ``rows`` a slice of the inputs.

    Gradient flows when grad mode is on; active hooks apply. Completion positions are those after
    each row's prompt; a scaling hook with ``positions="generated"`` touches exactly those.

    ``shared_prefix_layer=L`` computes blocks ``0..L-1`` once for rows of a chunk that are the same
    sequence and copies the residual stream before block L to each of them: IPG scores each rollout
    at q alpha points whose hooks differ only from block L on. Gradients then reach activations at
    block L and above, not parameters or activations below it.

    Logits are computed ``position_chunk_size`` completion positions at a time (checkpointed under
    gradient), so long completions do not hold [rows, completion, vocab] in memory; hooks on
    ``ln_final``/``unembed`` then also run again in the backward pass.

    With a ``memory`` budget (:class:`ipgkit.memory.MemoryBudget`) each chunk runs with fused
    attention and the blocks above ``gradient_from_block`` checkpointed, until the caller resumes
    the iterator (so a backward in the loop body is bounded too); chunks of ``chunk_size`` rows
    are split further to fit the budget, and positions per logits block follow it.
    """
    policy = require_policy(policy, "iter_scores")
    if len(prompt_ids) != len(completion_ids):
        raise IpgkitError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    if not prompt_ids:
        raise IpgkitError("nothing to score (no completions)")
    model, device = policy.model, policy.model.cfg.device
    everything = list(range(len(prompt_ids)))
    size = chunk_size or len(everything)
    chunks = [everything[i : i + size] for i in range(0, len(everything), size)]
    if memory is not None:
        widths = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
        chunks = memory.split(chunks, widths, model.cfg)
        position_chunk_size = memory.position_chunk_size(model.cfg)
    for chunk in chunks:
        rows = slice(chunk[0], chunk[-1] + 1)
        prompts, completions = prompt_ids[rows], completion_ids[rows]
        prompt_lengths = torch.tensor([len(p) for p in prompts])
        completion_lengths = torch.tensor([len(c) for c in completions])
        if int(completion_lengths.min()) == 0:
            raise IpgkitError("cannot score an empty completion")
        total = int((prompt_lengths + completion_lengths).max())
        check_context(policy, total, 0)
        tokens, attention = _right_padded(prompts, completions, policy.pad_token_id)
        width = int(completion_lengths.max())
        steps = torch.arange(width)
        mask = steps[None, :] < completion_lengths[:, None]
        # the logits at position prompt_len - 1 + t predict completion token t
        positions = (prompt_lengths[:, None] - 1 + steps[None, :]).clamp(max=total - 1)
        targets = tokens.gather(1, (positions + 1).clamp(max=total - 1))
        layout = SequenceLayout(generated_start=prompt_lengths)
        passes = (
            contextlib.nullcontext()
            if memory is None
            else bounded_passes(model, gradient_from_block)
        )
        with passes:
            with sequence_layout(layout):
                resid = _final_residual(
                    model, tokens.to(device), attention.to(device), shared_prefix_layer, layout
                )
                resid = resid.gather(
                    1, positions.to(device)[..., None].expand(-1, -1, resid.shape[-1])
                )
                token_logprobs, entropy = _token_scores(
                    model, resid, targets.to(device), with_entropy, position_chunk_size
                )
            mask = mask.to(token_logprobs.device)
            token_logprobs = token_logprobs.masked_fill(~mask, 0.0)
            entropy = entropy.masked_fill(~mask, 0.0) if with_entropy else None
            yield rows, TokenScores(token_logprobs, entropy, mask)


def score_completions(
    policy: Policy,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    chunk_size: int | None = None,
    with_entropy: bool = True,
) -> TokenScores:
    """Teacher-forced per-token log pi(a_t | s_t) and entropy for whole batches.

    Args:
        policy: the policy to score under (active hooks apply).
        prompt_ids: per row, the prompt token ids (as :meth:`Policy.encode` returns).
        completion_ids: per row, the completion token ids (EOS included if it was generated).
        chunk_size: rows per forward pass (all at once when None).
        with_entropy: also return the entropy of each next-token distribution.

    Returns:
        :class:`TokenScores` with ``[rows, longest completion]`` tensors.

    Example:
        >>> scores = score_completions(policy, rollouts.row_prompt_ids(),
        ...                            rollouts.row_completion_ids())             # doctest: +SKIP
        >>> scores.sequence_logprobs().shape                                    # doctest: +SKIP
        torch.Size([256])
    """
    chunks = list(iter_scores(policy, prompt_ids, completion_ids, chunk_size, with_entropy))
    width = max(scores.mask.shape[1] for _, scores in chunks)

    def cat(attribute, value):
        return torch.cat([_pad_right(getattr(s, attribute), width, value) for _, s in chunks])

    entropy = cat("entropy", 0.0) if with_entropy else None
    return TokenScores(cat("logprobs", 0.0), entropy, cat("mask", False))


def score_rollouts(
    policy: Policy, rollouts: Rollouts, chunk_size: int | None = None, with_entropy: bool = True
) -> TokenScores:
    """:func:`score_completions` over a :class:`Rollouts` (rows in the same order)."""
    return score_completions(
        policy, rollouts.row_prompt_ids(), rollouts.row_completion_ids(), chunk_size, with_entropy
    )


def position_mask(
    prompt_lengths: Int[Tensor, " batch"],
    completion_lengths: Int[Tensor, " batch"],
    width: int,
    positions: Literal["all", "prompt", "generated"] = "all",
) -> Bool[Tensor, "batch width"]:
    """Which positions of a right-padded prompt + completion batch are real tokens of the kind asked.

    Example:
        >>> position_mask(torch.tensor([2]), torch.tensor([2]), 5, "generated")
        tensor([[False, False,  True,  True, False]])
    """
    steps = torch.arange(width)[None, :]
    end = (prompt_lengths + completion_lengths)[:, None]
    if positions == "all":
        return steps < end
    if positions == "prompt":
        return steps < prompt_lengths[:, None]
    if positions == "generated":
        return (steps >= prompt_lengths[:, None]) & (steps < end)
    raise IpgkitError(f"positions must be 'all', 'prompt' or 'generated', got {positions!r}")


@dataclass
class ActivationChunk:
    """Activations at one hook for the selected tokens of a chunk of rows.

    Attributes:
        rows: which input rows the chunk covers.
        activations: [tokens, width] the hook's values at the selected positions (row-major order).
        token_ids: [tokens] the input token at each selected position.
        row_index: [tokens] the input row (absolute) each selected position belongs to.
        position: [tokens] each token's index in its row's prompt + completion sequence.
    """

    rows: slice
    activations: Float[Tensor, "tokens width"]
    token_ids: Int[Tensor, " tokens"]
    row_index: Int[Tensor, " tokens"]
    position: Int[Tensor, " tokens"]


def iter_activations(
    policy: Policy,
    hook_name: str,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    positions: Literal["all", "prompt", "generated"] = "generated",
    chunk_size: int = 64,
    memory: MemoryBudget | None = None,
) -> Iterator[ActivationChunk]:
    """Activations at ``hook_name`` over prompt + completion rows, through the teacher-forced pass.

    The same forward as :func:`iter_scores` (so steering hooks and the sequence layout apply), no
    gradient. Baselines and IPG's mean baseline reduce these chunks as they stream past. With a
    ``memory`` budget, chunks are also split to fit it and attention is fused.

    Example:
        >>> for chunk in iter_activations(policy, "blocks.2.hook_resid_post",
        ...                               rollouts.row_prompt_ids(),
        ...                               rollouts.row_completion_ids()):    # doctest: +SKIP
        ...     total += chunk.activations.abs().sum(0)
    """
    from ipgkit.components import resolve_hook

    resolve_hook(policy.model, hook_name)
    captured: list[Tensor] = []

    def capture(activation: Tensor, hook) -> None:
        captured.append(activation.detach())

    with torch.no_grad(), policy.model.hooks(fwd_hooks=[(hook_name, capture)]):
        for rows, _ in iter_scores(
            policy, prompt_ids, completion_ids, chunk_size, False, memory=memory
        ):
            activation = captured.pop()
            prompt_lengths = torch.tensor([len(p) for p in prompt_ids[rows]])
            completion_lengths = torch.tensor([len(c) for c in completion_ids[rows]])
            width = activation.shape[1]
            mask = position_mask(prompt_lengths, completion_lengths, width, positions)
            tokens, _ = _right_padded(prompt_ids[rows], completion_ids[rows], policy.pad_token_id)
            row_index = torch.arange(rows.start, rows.stop)[:, None].expand_as(mask)
            position = torch.arange(width)[None, :].expand_as(mask)
            yield ActivationChunk(
                rows,
                activation[mask.to(activation.device)].cpu(),
                tokens[mask],
                row_index[mask],
                position[mask],
            )


def mean_activations(
    policy: Policy,
    hook_name: str,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    row_groups: Int[Tensor, " rows"],
    positions: Literal["all", "prompt", "generated"] = "generated",
    transform: Callable[[Tensor], Tensor] | None = None,
    chunk_size: int = 64,
    memory: MemoryBudget | None = None,
) -> Float[Tensor, "groups width"]:
    """Mean of ``transform(activation)`` over the selected tokens of each group of rows (float64).

    ``row_groups[r]`` names row r's group (groups are ``0 .. max``); ``transform`` maps
    [tokens, width] activations to the values averaged (default: the activations themselves).

    Example:
        >>> per_prompt = mean_activations(policy, "blocks.2.hook_resid_post",
        ...                               rollouts.row_prompt_ids(), rollouts.row_completion_ids(),
        ...                               rollouts.group_ids, transform=torch.abs)  # doctest: +SKIP
    """
    row_groups = torch.as_tensor(row_groups, dtype=torch.long)
    sums, counts = None, torch.zeros(int(row_groups.max()) + 1, dtype=torch.float64)
    for chunk in iter_activations(
        policy, hook_name, prompt_ids, completion_ids, positions, chunk_size, memory
    ):
        values = chunk.activations.double()
        values = transform(values) if transform is not None else values
        if sums is None:
            sums = torch.zeros(len(counts), values.shape[-1], dtype=torch.float64)
        token_groups = row_groups[chunk.row_index]
        sums.index_add_(0, token_groups, values)
        counts.index_add_(0, token_groups, torch.ones(len(values), dtype=torch.float64))
    if sums is None or (counts == 0).any():
        raise IpgkitError(f"some groups have no tokens at positions={positions!r}")
    return sums / counts[:, None]
