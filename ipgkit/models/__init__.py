"""Models: :func:`load_model` returns a :class:`Policy` (hooked model + tokenizer + prompt format)."""

from __future__ import annotations

from pathlib import Path

from ipgkit.errors import IpgkitError
from ipgkit.models.arith import WEIGHTS_DIR, load_arith
from ipgkit.models.policy import Policy

EMBEDDED = ("arith",)


def load_model(name: str = "arith", device: str = "cpu") -> Policy:
    """Load a policy by name.

    Args:
        name: ``"arith"`` for the embedded reasoning model shipped with ipgkit (no network), or a
            directory written by ``ipgkit train-model`` (``config.json`` + ``model.safetensors``).
        device: torch device for the weights.

    Example:
        >>> policy = load_model("arith")
        >>> policy.model.cfg.n_layers
        4
    """
    if name == "arith":
        return load_arith(WEIGHTS_DIR, device=device)
    path = Path(name)
    if (path / "model.safetensors").exists() and (path / "config.json").exists():
        return load_arith(path, device=device)
    raise IpgkitError(
        f"unknown model {name!r}: use 'arith' (the embedded model) or a directory written by "
        "`ipgkit train-model`"
    )


__all__ = ["EMBEDDED", "Policy", "load_model"]
