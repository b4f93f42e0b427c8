"""Group-relative advantages: the one place IPG and GRPO turn a group's rewards into weights.

IPG names the modes as the literature does (``mean_std``, ``mean``, ``rloo``, ``none``); GRPO's
trainer takes TRL's ``scale_rewards`` (``group``, ``batch``, ``none``), which
:func:`scaled_advantages` maps onto the same computation.
"""

from __future__ import annotations

from typing import Literal

from jaxtyping import Bool, Float
from torch import Tensor

from ipgkit.errors import IpgkitError

AdvantageMode = Literal["mean_std", "mean", "rloo", "none"]
RewardScaling = Literal["group", "batch", "none"]


def zero_std_groups(rewards: Float[Tensor, "groups n"]) -> Bool[Tensor, " groups"]:
    """Groups whose rewards are all equal (TRL's ``frac_reward_zero_std`` counts these)."""
    return (rewards.max(-1).values - rewards.min(-1).values).abs() <= 1e-8


def group_advantages(
    rewards: Float[Tensor, "groups n"], mode: AdvantageMode = "mean_std", eps: float = 1e-4
) -> Float[Tensor, "groups n"]:
    """Group-relative advantages, one row of ``n`` rollouts per prompt.

    - ``mean_std`` (GRPO): ``(r - group mean) / (group std + eps)``;
    - ``mean`` (Dr. GRPO): ``r - group mean``;
    - ``rloo`` (leave-one-out): ``r - mean of the other n - 1 rewards``
      = ``n / (n - 1) (r - mean)``.
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


def scaled_advantages(
    rewards: Float[Tensor, "groups n"], scale_rewards: RewardScaling = "group"
) -> Float[Tensor, "groups n"]:
    """Advantages in TRL's ``scale_rewards`` vocabulary (GRPO's trainer).

    ``"group"`` is :func:`group_advantages`'s ``mean_std``; ``"none"`` its ``mean`` (Dr. GRPO);
    ``"batch"`` centres per group and divides by the standard deviation of the whole batch.

    Example:
        >>> scaled_advantages(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), "none")
        tensor([[ 0.5000, -0.5000],
                [ 0.0000,  0.0000]])
    """
    if scale_rewards == "group":
        return group_advantages(rewards, "mean_std")
    centred = group_advantages(rewards, "mean")
    if scale_rewards == "batch":
        return centred / (rewards.std() + 1e-4)
    if scale_rewards == "none":
        return centred
    raise IpgkitError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
