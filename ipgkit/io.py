"""File helpers: atomic writes, and reading back what ipgkit wrote without running anything.

Writes go to a temporary file that replaces the target in one step, so an interrupted run never
leaves a truncated file, and get the permissions the user's umask gives a new file.

Reads never unpickle code: tensors and plain containers come back through
``torch.load(weights_only=True)``, and ipgkit's own records (hard pools, interventions) are JSON
whose dataclasses are rebuilt only from an explicit list of allowed classes. A damaged, foreign or
code-carrying file is refused with a :class:`~ipgkit.errors.DataFormatError` that names it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ipgkit import distributed
from ipgkit.errors import DataFormatError, IpgkitError


def _new_file_mode() -> int:
    """What ``open()`` gives a new file under the current umask (0o644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one step.

    The result has the permissions of a newly created file (safetensors' writer alone would leave
    0600, unlike every other file in the folder).

    Example:
        >>> with atomic_path("scores.csv") as tmp:          # doctest: +SKIP
        ...     frame.to_csv(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """Save tensors and plain containers (what :func:`load_torch_state` reads back)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], key: str, header: dict
) -> Path:
    """One ``.safetensors`` file, atomically: ``tensors`` and a JSON ``header`` stored under
    metadata ``key`` (what :func:`load_tensors` reads back; no pickle)."""
    from safetensors.torch import save_file

    path = Path(path)
    contiguous = {name: tensor.contiguous() for name, tensor in tensors.items()}
    with atomic_path(path) as temporary:
        save_file(contiguous, str(temporary), metadata={key: json.dumps(header)})
    return path


def load_tensors(
    path: str | os.PathLike, key: str, what: str
) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and JSON header of a file written by :func:`save_tensors` under ``key``;
    a missing file is an :class:`IpgkitError`, anything else a :class:`DataFormatError`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise IpgkitError(f"no {what} at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises its own error types
        raise DataFormatError(f"{path} is not a safetensors file: {error}") from error
    if key not in metadata:
        raise DataFormatError(
            f"{path} holds no {what}: it has no {key!r} metadata (not written by ipgkit)"
        )
    return tensors, json.loads(metadata[key])


def load_torch_state(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Read a file written by :func:`atomic_torch_save` with ``torch.load(weights_only=True)``.

    Only tensors, numbers, strings and plain containers load; a pickle that would build any other
    object (and so could run code) is refused without running it.

    Args:
        what: what the file is, for the error message (``"IPG checkpoint"``, ...).

    Raises:
        DataFormatError: the file is truncated, corrupt, not a torch file, or carries code.

    Example:
        >>> state = load_torch_state("runs/grpo/checkpoint.pt", "GRPO checkpoint")  # doctest: +SKIP
    """
    path = Path(path)
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).split("\n\n")[0].split("\n")[0]
        if "Weights only load failed" in reason or "Unsupported global" in str(error):
            raise DataFormatError(
                f"{path} is not a {what} ipgkit can read safely: loading it would build objects "
                "other than tensors and plain containers (a pickle that can run code), so it was "
                "refused without running it. Delete it, or load it yourself only if you trust "
                "whoever wrote it"
            ) from None
        raise DataFormatError(f"{path} is a corrupt {what} ({reason}); delete it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        reason = str(error).split("\n")[0].split(". ")[0]  # torch appends miniz's advice
        raise DataFormatError(
            f"{path} is a truncated or corrupt {what} ({type(error).__name__}: {reason}); delete "
            "it and the step that wrote it runs again"
        ) from None


# --- resumable runs ------------------------------------------------------------------------------

#: version of the checkpoint file layout; a file of another version is refused, not misread
CHECKPOINT_FORMAT = 1


class Checkpoint:
    """The progress of one long run in one file, so that rerunning the same run resumes from it.

    Every resumable command (sampling, IPG, GRPO, training the embedded model) keeps its progress
    through this class. The file holds a format version, the run's identity (settings, inputs and
    model, as JSON values) and the state; it is rewritten atomically and read back with
    ``weights_only=True`` (:func:`load_torch_state`). A file of another run or another format is
    refused with the identity keys that differ: progress is never mixed across runs.

    Args:
        path: the file.
        identity: what a resumed run must match, JSON-ready (tuples compare as lists).
        what: what the file is, for messages (``"GRPO checkpoint"``).

    Example:
        >>> store = Checkpoint(tmp / "run.pt", {"config": {"lr": 0.1}}, "demo checkpoint")
        >>> store.load() is None
        True
        >>> store.save({"step": 3})
        >>> Checkpoint(tmp / "run.pt", {"config": {"lr": 0.1}}, "demo checkpoint").load()
        {'step': 3}
    """

    def __init__(self, path: str | os.PathLike, identity: dict, what: str = "checkpoint") -> None:
        self.path = Path(path)
        self.identity = json.loads(json.dumps(identity))
        self.what = what

    def load(self) -> Any | None:
        """The saved state, or None when there is no file yet."""
        if not self.path.exists():
            return None
        saved = load_torch_state(self.path, self.what)
        if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
            raise DataFormatError(
                f"{self.path} is not a {self.what} of this ipgkit version (expected format "
                f"{CHECKPOINT_FORMAT}); delete it to start the run over"
            )
        if saved["identity"] != self.identity:
            keys = sorted(self.identity.keys() | saved["identity"].keys())
            differing = [k for k in keys if saved["identity"].get(k) != self.identity.get(k)]
            raise IpgkitError(
                f"{self.path} holds a {self.what} of another run (differs in {differing}); "
                "pass another path or delete the file to start over"
            )
        return saved["state"]

    def save(self, state: Any) -> None:
        """Replace the file with ``state`` (tensors and plain containers), atomically."""
        record = {"format": CHECKPOINT_FORMAT, "identity": self.identity, "state": state}
        atomic_torch_save(record, self.path)


def cached(
    path: str | os.PathLike,
    compute: Callable[[], Any],
    load: Callable[[Path], Any],
    save: Callable[[Any, Path], None],
) -> Any:
    """``load(path)`` when the file exists, else ``compute()``, saved with ``save(value, path)``:
    the one compute-once idiom of workspaces and experiments (``save`` should write atomically).

    Under torchrun every rank computes (the computation may be sharded) and rank 0 alone
    saves; all ranks wait until it has. Whether the file exists is rank 0's answer on every
    rank (:func:`ipgkit.distributed.agreed`), so no rank can skip the computation another runs.

    Example:
        >>> frame = cached(root / "table.csv", compute, pd.read_csv,
        ...                lambda f, p: atomic_write_text(p, f.to_csv()))   # doctest: +SKIP
    """
    path = Path(path)
    if distributed.agreed(path.exists()):
        return load(path)
    value = compute()
    if distributed.is_main():
        save(value, path)
    distributed.barrier()
    return value


def cached_state(path: str | os.PathLike, compute: Callable[[], Any], what: str) -> Any:
    """Tensors and containers stored at ``path``, or ``compute()``'s, stored there atomically.

    Example:
        >>> cached_state(root / "sft.pt", model.state_dict, "SFT weights")  # doctest: +SKIP
    """
    return cached(path, compute, lambda file: load_torch_state(file, what), atomic_torch_save)


# --- ipgkit's own records as JSON --------------------------------------------------------------


def config_record(config: Any, added: dict[str, Any] | None = None) -> dict:
    """``dataclasses.asdict(config)`` without the fields named in ``added`` (at any depth) where
    they hold the given value: the settings a checkpoint or workspace records as its identity.
    Fields added after runs were written are left out at their defaults, so those runs' files
    stay valid; by default ``memory_budget_mib`` when unset (it bounds memory, not results)."""
    added = {"memory_budget_mib": None} if added is None else added

    def prune(value):
        if isinstance(value, dict):
            return {k: prune(v) for k, v in value.items() if not (k in added and v == added[k])}
        return value

    return prune(dataclasses.asdict(config))


def to_json_record(value: Any) -> Any:
    """Dataclasses, DataFrames, tuples, lists and dicts as plain JSON values (see
    :func:`from_json_record`)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: to_json_record(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__dataclass__": type(value).__name__, "fields": fields}
    if isinstance(value, pd.DataFrame):
        return {"__dataframe__": json.loads(value.to_json(orient="split", index=False))}
    if isinstance(value, tuple):
        return {"__tuple__": [to_json_record(v) for v in value]}
    if isinstance(value, list):
        return [to_json_record(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"only string keys are stored, got {list(value)[:3]}")
        return {key: to_json_record(v) for key, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store {type(value).__name__} as a JSON record")


def from_json_record(data: Any, classes: Iterable[type]) -> Any:
    """Rebuild what :func:`to_json_record` wrote; dataclasses only from ``classes``."""
    allowed = {cls.__name__: cls for cls in classes}
    return _decode(data, allowed)


def _decode(data: Any, allowed: dict[str, type]) -> Any:
    if isinstance(data, list):
        return [_decode(v, allowed) for v in data]
    if not isinstance(data, dict):
        return data
    if "__dataclass__" in data:
        name = data["__dataclass__"]
        if name not in allowed:
            raise DataFormatError(
                f"record of class {name!r}, which is not one of {sorted(allowed)}"
            )
        return allowed[name](**{k: _decode(v, allowed) for k, v in data["fields"].items()})
    if "__dataframe__" in data:
        split = data["__dataframe__"]
        return pd.DataFrame(split["data"], columns=split["columns"])
    if "__tuple__" in data:
        return tuple(_decode(v, allowed) for v in data["__tuple__"])
    return {key: _decode(v, allowed) for key, v in data.items()}


def save_json_record(value: Any, path: str | os.PathLike) -> None:
    """Write :func:`to_json_record` of ``value`` atomically."""
    atomic_write_text(path, json.dumps({"ipgkit_record": 1, "value": to_json_record(value)}))


def load_json_record(path: str | os.PathLike, classes: Iterable[type], what: str = "record") -> Any:
    """Read a file written by :func:`save_json_record` (dataclasses only from ``classes``).

    Raises:
        DataFormatError: the file is truncated, not JSON, or not an ipgkit record.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataFormatError(
            f"{path} is a truncated or corrupt {what} ({error}); delete it and the step that "
            "wrote it runs again"
        ) from None
    if not isinstance(data, dict) or data.get("ipgkit_record") != 1:
        raise DataFormatError(f"{path} is not an ipgkit {what} (no ipgkit_record header)")
    try:
        return from_json_record(data["value"], classes)
    except (TypeError, KeyError) as error:
        raise DataFormatError(f"{path} is a malformed {what} ({error})") from None


__all__ = [
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_text",
    "from_json_record",
    "load_json_record",
    "load_torch_state",
    "save_json_record",
    "to_json_record",
]
