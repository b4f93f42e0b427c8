"""Models: :func:`load_model` returns a :class:`Policy` (hooked model + tokenizer + prompt format)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ipgkit.errors import IpgkitError
from ipgkit.models.arith import WEIGHTS_DIR, load_arith
from ipgkit.models.hf import is_hf_directory, load_hf_directory
from ipgkit.models.policy import Policy

EMBEDDED = ("arith",)


def load_model(name: str = "arith", device: str = "cpu", saes: Sequence | None = None) -> Policy:
    """Load a policy by name.

    Args:
        name: ``"arith"`` for the embedded reasoning model shipped with ipgkit (no network), a
            directory written by ``ipgkit train-model`` (``config.json`` + ``model.safetensors``),
            or a local Hugging Face checkpoint directory (Llama and Qwen2 checked; see
            :func:`ipgkit.models.hf.load_hf_directory`).
        device: torch device for the weights.
        saes: SAEs to splice in, error term kept (see :mod:`ipgkit.saes`): layer numbers of the
            SAEs shipped in ``saes/``, SAE directories, or SAE objects. The model is then a
            ``HookedSAETransformer`` that computes what the plain model does.

    Example:
        >>> policy = load_model("arith")
        >>> policy.model.cfg.n_layers
        4
        >>> load_model("arith", saes=[2]).model.acts_to_saes.keys()        # doctest: +SKIP
        dict_keys(['blocks.2.hook_resid_post'])
    """
    policy = _load_policy(name, device)
    if saes:
        from ipgkit.saes import attach_saes

        policy = attach_saes(policy, saes)
    return policy


def _load_policy(name: str, device: str) -> Policy:
    if name == "arith":
        return load_arith(WEIGHTS_DIR, device=device)
    path = Path(name)
    if is_hf_directory(path):
        return load_hf_directory(path, device=device)
    if (path / "model.safetensors").exists() and (path / "config.json").exists():
        return load_arith(path, device=device)
    raise IpgkitError(
        f"unknown model {name!r}: use 'arith' (the embedded model), a directory written by "
        "`ipgkit train-model`, or a local Hugging Face checkpoint directory"
    )


__all__ = ["EMBEDDED", "Policy", "load_model"]
