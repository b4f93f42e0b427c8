"""Bit-for-bit reproducible training steps on CPU.

TransformerLens embeds tokens by indexing (``W_E[tokens]``), whose backward accumulates into the
embedding with ``index_put_(accumulate=True)``: on CPU its threads add in a varying order, so two
identical GRPO or SFT steps differed in the last bit, and a resumed run could not equal an
uninterrupted one exactly. Backward passes of training steps on CPU run under
:func:`deterministic_algorithms`, which costs about 10% of a GRPO step on 2 cores. On CUDA they
are left alone: deterministic cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` set before start-up, and
the determinism ipgkit promises is on CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def deterministic_algorithms(device: str | torch.device = "cpu") -> Iterator[None]:
    """Use torch's deterministic kernels inside the block when ``device`` is the CPU, restoring
    the caller's setting after.

    Example:
        >>> with deterministic_algorithms(policy.model.cfg.device):
        ...     loss.backward()                                               # doctest: +SKIP
    """
    if torch.device(device).type != "cpu":
        yield
        return
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
