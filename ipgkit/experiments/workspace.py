"""Where the control experiments keep what they computed, so an interrupted suite resumes.

Everything is content-addressed: a sampled support set, an attribution, a per-problem evaluation
or a finished table is stored under a key built from what determines it (policy, problems,
component indices, gamma, settings). A rerun, or another experiment that needs the same thing,
reads it back instead of computing it; changing a setting changes the key, so stale results are
never reused. Evaluations are appended to one JSON-lines file, a line per finished evaluation,
so a kill loses at most the evaluation that was running.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ipgkit import distributed
from ipgkit.attribution.result import AttributionResult
from ipgkit.components import ComponentSet, Positions
from ipgkit.errors import IpgkitError
from ipgkit.evaluation import evaluation_rollouts
from ipgkit.io import (
    atomic_torch_save,
    atomic_write_text,
    cached,
    cached_state,
    load_torch_state,
)
from ipgkit.models.policy import Policy
from ipgkit.rollouts import Rollouts
from ipgkit.steering import steer
from ipgkit.tasks.base import Task


def digest(value) -> str:
    """A short stable hash of a JSON-able value (keys of cached results)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _settings_text(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True, indent=1, default=str)


def set_signature(components: ComponentSet | None) -> str:
    """What identifies a steered set in a cache key: hook, kind and indices (or the direction),
    and per-unit gains where the set has them (sets without keep their earlier keys)."""
    if components is None:
        return "none"
    basis = None if components.directions is None else components.directions.double().tolist()
    identity = [components.indices, basis]
    if components.gains is not None:
        identity.append(list(components.gains))
    return f"{components.hook_name}:{components.kind}:" + digest(identity)


@dataclass
class Outcome:
    """Per-problem results of one evaluation (greedy decoding, one completion per problem).

    Attributes:
        problem_ids: the problems, in task order.
        correct: [problems] 1.0 where the final answer is right.
        length: [problems] completion tokens, EOS included.
        texts: the completions (kept for the distilled model's check-rate, and for reading).
    """

    problem_ids: list[str]
    correct: np.ndarray
    length: np.ndarray
    texts: list[str]

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    def to_record(self) -> dict:
        return {
            "problem_ids": self.problem_ids,
            "correct": self.correct.tolist(),
            "length": self.length.tolist(),
            "texts": self.texts,
        }

    @classmethod
    def from_record(cls, record: dict) -> Outcome:
        return cls(
            record["problem_ids"],
            np.asarray(record["correct"], dtype=float),
            np.asarray(record["length"], dtype=float),
            record["texts"],
        )


class Workspace:
    """A folder of cached experiment results.

    Example:
        >>> ws = Workspace("runs/experiments")                                # doctest: +SKIP
        >>> outcome = ws.evaluate(policy, "arith", task, result.top(10), 2.0)  # doctest: +SKIP
    """

    def __init__(
        self, root: str | os.PathLike, settings: dict | None = None, overwrite: bool = False
    ) -> None:
        """Open (or create) the workspace at ``root``.

        Args:
            settings: what the results in it were computed with (a JSON-able dict), recorded in
                ``settings.json``. A folder that holds results of other settings is refused, so
                two configurations never mix in one folder.
            overwrite: with different settings, move the old folder aside to
                ``<root>.replaced-<time>`` (nothing is deleted) and start afresh.
        """
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise IpgkitError(f"workspace {self.root} is a file, not a folder")
        main = distributed.is_main()  # under torchrun rank 0 claims and writes the folder
        if settings is not None and (main or not overwrite):
            self._claim(settings, overwrite)  # other ranks only check, and refuse alike
        if main:
            self.root.mkdir(parents=True, exist_ok=True)
            if settings is not None and not (self.root / "settings.json").exists():
                atomic_write_text(self.root / "settings.json", _settings_text(settings))
        distributed.barrier()
        self.evaluations_path = self.root / "evaluations.jsonl"
        self._evaluations: dict[str, dict] = {}
        if self.evaluations_path.exists():
            text = self.evaluations_path.read_text()
            good = []
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill: that evaluation reruns
                    continue
                self._evaluations[record["key"]] = record
                good.append(line)
            if text and (len(good) < len(text.splitlines()) or not text.endswith("\n")):
                # drop the broken line now, or the next append would be glued onto it
                atomic_write_text(self.evaluations_path, "".join(f"{line}\n" for line in good))
        self.computed = 0  # evaluations run by this process (the rest came from the cache)

    def _claim(self, settings: dict, overwrite: bool) -> None:
        recorded = self.root / "settings.json"
        if not recorded.exists():
            return
        previous = json.loads(recorded.read_text())
        wanted = json.loads(_settings_text(settings))
        if previous == wanted:
            return
        changed = sorted(
            k for k in previous.keys() | wanted.keys() if previous.get(k) != wanted.get(k)
        )
        if not overwrite:
            raise IpgkitError(
                f"{self.root} holds results of other settings (differing: {', '.join(changed)}); "
                "use another output folder, or overwrite=True (--overwrite) to move it aside"
            )
        aside = self.root.with_name(f"{self.root.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        self.root.rename(aside)

    # --- evaluations ------------------------------------------------------------------------

    def evaluate(
        self,
        policy: Policy,
        policy_key: str,
        task: Task,
        components: ComponentSet | Sequence[ComponentSet] | None = None,
        gamma: float = 1.0,
        positions: Positions = "all",
        max_new_tokens: int | None = None,
        progress: bool = False,
    ) -> Outcome:
        """Greedy accuracy per problem of ``policy`` on ``task``, steered by ``gamma`` on
        ``components`` (None, or gamma = 1 on sets without per-unit gains, is the unsteered
        model: the scaling hook is the identity there, bit for bit, so both share one cache
        entry; a set with gains steers at gamma = 1, each unit by its gain).

        Args:
            policy_key: names the weights (e.g. ``"arith"``, ``"arith+sae2"``): part of the key.
        """
        sets = (
            []
            if components is None
            else ([components] if isinstance(components, ComponentSet) else list(components))
        )
        steered = bool(sets) and (gamma != 1.0 or any(s.gains is not None for s in sets))
        key = "|".join(
            [
                policy_key,
                task.name,
                task.split,
                digest([p.id for p in task.problems]),
                ",".join(set_signature(s) for s in sets) if steered else "none",
                f"{float(gamma):g}" if steered else "1",
                positions if steered else "-",
                str(max_new_tokens or task.max_new_tokens),
            ]
        )
        if key in self._evaluations:
            return Outcome.from_record(self._evaluations[key])
        with steer(policy, sets, gamma, positions) if steered else contextlib.nullcontext():
            greedy, _ = evaluation_rollouts(
                policy, task, max_new_tokens=max_new_tokens, progress=progress
            )
        outcome = Outcome(
            [p.id for p in task.problems],
            greedy.rewards.numpy().astype(float),
            greedy.completion_lengths.numpy().astype(float),
            list(greedy.texts),
        )
        record = {"key": key, **outcome.to_record()}
        self._evaluations[key] = record
        self.computed += 1
        if not distributed.is_main():  # under torchrun every rank holds the outcome; rank 0 writes
            return outcome
        with self.evaluations_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return outcome

    # --- objects ----------------------------------------------------------------------------

    def rollouts(self, name: str, settings, draw: Callable[[], Rollouts]) -> Rollouts:
        """Sampled rollouts, drawn once per (name, settings)."""
        return cached(
            self.root / "rollouts" / f"{name}-{digest(settings)}.pt",
            draw,
            lambda path: Rollouts.from_state_dict(load_torch_state(path, "cached rollouts file")),
            lambda rollouts, path: atomic_torch_save(rollouts.state_dict(), path),
        )

    def attribution(
        self, name: str, settings, compute: Callable[[], AttributionResult]
    ) -> AttributionResult:
        """An attribution result, computed once per (name, settings)."""
        return cached(
            self.root / "attributions" / f"{name}-{digest(settings)}.safetensors",
            compute,
            AttributionResult.load,
            lambda result, path: result.save(path),
        )

    def weights(self, name: str, settings, train: Callable[[], dict]) -> dict:
        """A model state dict, trained once per (name, settings)."""
        path = self.root / "models" / f"{name}-{digest(settings)}.pt"
        return cached_state(path, train, "cached model weights file")

    def note(self, name: str, values: dict) -> None:
        """Record facts about a computed object (e.g. the student's training counts) in
        ``notes.json``, for the tables and the README."""
        path = self.root / "notes.json"
        notes = json.loads(path.read_text()) if path.exists() else {}
        notes[name] = values
        if distributed.is_main():
            atomic_write_text(path, json.dumps(notes, indent=1, default=str))
        distributed.barrier()

    def notes(self) -> dict:
        path = self.root / "notes.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def table_path(self, name: str) -> Path:
        return self.root / f"{name}.csv"

    def table(self, name: str, settings, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """A finished experiment's table (CSV), recomputed only when its settings change."""
        path, stamp = self.table_path(name), self.root / f".{name}.settings"
        finished = path.exists() and stamp.exists() and stamp.read_text() == digest(settings)
        if distributed.agreed(finished):  # rank 0's answer: see io.cached
            return pd.read_csv(path)
        frame = compute()
        if not isinstance(frame, pd.DataFrame):
            raise IpgkitError(
                f"experiment {name!r} returned {type(frame).__name__}, not a DataFrame"
            )
        if distributed.is_main():
            atomic_write_text(path, frame.to_csv(index=False))
            atomic_write_text(stamp, digest(settings))
        distributed.barrier()
        return frame
