"""The rollouts data: how completions are drawn (:class:`SamplingConfig`) and what was drawn
(:class:`Rollouts`), rows grouped by problem."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ipgkit.errors import DataFormatError, IpgkitError
from ipgkit.io import load_tensors, save_tensors
from ipgkit.tasks.base import Problem, RewardFunction, call_reward, reward_columns, reward_name

from .advantages import AdvantageMode, group_advantages, zero_std_groups

#: the tensors of a saved :class:`Rollouts` (the rest is JSON metadata)
TENSOR_FIELDS = ("group_ids", "completion_ids", "completion_mask", "sample_logprobs")
ROLLOUTS_FORMAT_VERSION = 1


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
            return torch.cat([pad_right(getattr(part, name), width, value) for part in parts])

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
        """A copy with ``rewards`` from a TRL-style reward function (checked for NaN and length)."""
        columns = reward_columns(self.problems, repeats=self.n)
        columns["completion_ids"] = self.row_completion_ids()
        row_prompts = [self.prompts[g] for g in self.group_ids.tolist()]
        values = call_reward(reward, row_prompts, self.texts, **columns)
        rewards = torch.tensor(values, dtype=torch.float32)
        return replace(self, rewards=rewards, reward_name=reward_name(reward))

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

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.safetensors`` file (the tensors, and the texts, problems and settings as
        JSON metadata; no pickle), atomically, e.g. to share the support set of a result.
        Problems' metadata goes through JSON, so tuples in it come back as lists.

        Example:
            >>> rollouts.save("runs/support.safetensors")                  # doctest: +SKIP
            >>> Rollouts.load("runs/support.safetensors").texts[0]         # doctest: +SKIP
        """
        state = self.state_dict()
        tensors = {name: state.pop(name) for name in TENSOR_FIELDS}
        if state["rewards"] is not None:
            tensors["rewards"] = state["rewards"]
        state["rewards"] = None
        header = {"format_version": ROLLOUTS_FORMAT_VERSION, **state}
        return save_tensors(path, tensors, "ipgkit_rollouts", header)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Rollouts:
        """Read a file written by :meth:`save`."""
        tensors, header = load_tensors(path, "ipgkit_rollouts", "rollouts")
        version = header.pop("format_version")
        if version != ROLLOUTS_FORMAT_VERSION:
            raise DataFormatError(
                f"{path} has rollouts format {version}; this ipgkit reads {ROLLOUTS_FORMAT_VERSION}"
            )
        return cls.from_state_dict({**header, **tensors})

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


def pad_right(tensor: Tensor, width: int, value) -> Tensor:
    if tensor.shape[1] == width:
        return tensor
    pad = torch.full((tensor.shape[0], width - tensor.shape[1]), value, dtype=tensor.dtype)
    return torch.cat([tensor, pad], dim=1)
