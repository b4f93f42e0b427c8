"""Resuming an IPG run: its sampled rollouts and scored rows in one
:class:`~ipgkit.io.Checkpoint`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict

from ipgkit.io import Checkpoint
from ipgkit.rollouts import Rollouts

from .engine import PathGradients

#: seconds between checkpoint writes while scoring (IPGKIT_CHECKPOINT_SECONDS overrides it)
CHECKPOINT_EVERY_SECONDS = float(os.environ.get("IPGKIT_CHECKPOINT_SECONDS", "30"))


class IPGCheckpoint:
    """A run's sampled rollouts (by name) and its scoring progress, rewritten atomically.

    Example:
        >>> store = IPGCheckpoint("runs/ipg.pt", {"config": config.describe()})  # doctest: +SKIP
        >>> rollouts = store.sampled("unmodified", lambda: sample(policy, problems))
    """

    def __init__(self, path: str | os.PathLike, identity: dict) -> None:
        self.file = Checkpoint(path, identity, "IPG checkpoint")
        self.state = self.file.load() or {}

    def sampled(self, name: str, draw: Callable[[], Rollouts]) -> Rollouts:
        """Rollouts saved under ``name``, or drawn now and saved."""
        samples = self.state.setdefault("samples", {})
        if name in samples:
            return Rollouts.from_state_dict(samples[name])
        rollouts = draw()
        samples[name] = rollouts.state_dict()
        self.file.save(self.state)
        return rollouts

    def scoring(self) -> PathGradients | None:
        saved = self.state.get("scoring")
        return None if saved is None else PathGradients(**saved)

    def save_scoring(self, partial: PathGradients) -> None:
        self.state["scoring"] = asdict(partial)
        self.file.save(self.state)

    def engine_hooks(self) -> dict:
        """:func:`~ipgkit.attribution.engine.path_gradients` keywords that resume and save."""
        return {
            "resume_from": self.scoring(),
            "on_progress": self.save_scoring,
            "save_every": CHECKPOINT_EVERY_SECONDS,
        }


def sampled(store: IPGCheckpoint | None, name: str, draw: Callable[[], Rollouts]) -> Rollouts:
    """``draw()``, through ``store`` when there is one."""
    return draw() if store is None else store.sampled(name, draw)
