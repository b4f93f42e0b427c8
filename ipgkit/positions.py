"""Where the generated tokens are: the positions mask and the layout of the batch being run.

Sampling and teacher-forced scoring lay out prompt + completion rows; :func:`sequence_layout` tells
every scaling hook that runs inside them which positions are prompt and which are generated, and
:func:`position_mask` is the one place that turns lengths into that mask (the scaling hook, IPG's
sums and activation reading all ask here). It knows nothing of models or components.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ipgkit.errors import IpgkitError

Positions = Literal["all", "prompt", "generated"]


@dataclass(frozen=True)
class SequenceLayout:
    """Where generation starts in each row of the batch being run, and where this call begins.

    Attributes:
        generated_start: [batch] absolute position of each row's first generated token.
        offset: absolute position of the first token of the current forward call (the KV-cache
            length during sampling, 0 for a full teacher-forced pass).
    """

    generated_start: Int[Tensor, " batch"]
    offset: int = 0

    def selected(self, batch: int, length: int, positions: Positions, device) -> torch.Tensor:
        """[batch, length] which positions of the current call are of kind ``positions``."""
        start = self.generated_start.to(device)
        if start.shape[0] != batch:
            raise IpgkitError(
                f"sequence layout covers {start.shape[0]} rows but the activation has {batch}"
            )
        return position_mask(start, None, length, positions, self.offset)


def position_mask(
    prompt_lengths: Int[Tensor, " batch"],
    completion_lengths: Int[Tensor, " batch"] | None,
    width: int,
    positions: Positions = "all",
    offset: int = 0,
) -> Bool[Tensor, "batch width"]:
    """Which of ``width`` positions (absolute positions ``offset ..``) are of kind ``positions``.

    Row b's prompt is positions ``0 .. prompt_lengths[b] - 1`` and its completion the next
    ``completion_lengths[b]`` (None: the completion runs on past ``width``, as while sampling);
    anything after is padding. The scaling hook, IPG's sums and activation reading all ask here.

    Example:
        >>> position_mask(torch.tensor([2]), torch.tensor([2]), 5, "generated")
        tensor([[False, False,  True,  True, False]])
    """
    steps = torch.arange(offset, offset + width, device=prompt_lengths.device)[None, :]
    starts = prompt_lengths[:, None]
    real = torch.ones_like(steps, dtype=torch.bool)
    if completion_lengths is not None:
        real = steps < (prompt_lengths + completion_lengths.to(prompt_lengths.device))[:, None]
    if positions == "all":
        return real.expand(len(prompt_lengths), width)
    if positions == "prompt":
        return (steps < starts) & real
    if positions == "generated":
        return (steps >= starts) & real
    raise IpgkitError(f"positions must be 'all', 'prompt' or 'generated', got {positions!r}")


_LAYOUT: contextvars.ContextVar[SequenceLayout | None] = contextvars.ContextVar(
    "ipgkit_layout", default=None
)


@contextlib.contextmanager
def sequence_layout(layout: SequenceLayout) -> Iterator[None]:
    """Tell scaling hooks which positions are generated while the block runs."""
    token = _LAYOUT.set(layout)
    try:
        yield
    finally:
        _LAYOUT.reset(token)


def current_layout() -> SequenceLayout | None:
    return _LAYOUT.get()


def set_layout_offset(offset: int) -> None:
    """Advance the active layout during KV-cached sampling (one call per new token)."""
    layout = _LAYOUT.get()
    if layout is not None:
        _LAYOUT.set(SequenceLayout(layout.generated_start, offset))
