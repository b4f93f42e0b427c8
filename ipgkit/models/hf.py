"""Hugging Face checkpoints in a local directory, as HookedTransformer policies, offline.

TransformerLens's ``from_pretrained`` resolves every name against its list of official models
before it looks at the disk, so it cannot load a local directory. Its converters can: the
config is read with ``convert_hf_model_config`` and the weights with ``get_pretrained_state_dict``,
then loaded unprocessed (no LayerNorm folding, no centring), so the hooked model computes exactly
what the Hugging Face model does and its activations are the model's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from ipgkit.errors import IpgkitError

from .policy import Policy

#: architectures whose TransformerLens conversion ipgkit's tests check against Hugging Face logits
CHECKED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def is_hf_directory(path: str | os.PathLike) -> bool:
    """A folder with a Hugging Face ``config.json`` (one that names its ``model_type``)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return "model_type" in json.loads(config.read_text())
    except json.JSONDecodeError:
        return False


@contextlib.contextmanager
def _neutral_path(path: Path) -> Iterator[str]:
    """TransformerLens reads a path containing "llama" or "gemma" as a model *name* and then
    fails; hand it a symlink with a neutral name instead."""
    lowered = str(path).lower()
    if "llama" not in lowered and "gemma" not in lowered:
        yield str(path)
        return
    with tempfile.TemporaryDirectory() as folder:
        link = Path(folder) / "local_checkpoint"
        link.symlink_to(path.resolve(), target_is_directory=True)
        yield str(link)


def chat_prompt_format(tokenizer):
    """``question -> prompt`` through the tokenizer's chat template (one user turn, with the
    generation prompt), or ``"Question: ...\\nAnswer:"`` when it has none."""
    if getattr(tokenizer, "chat_template", None):

        def with_template(question: str) -> str:
            messages = [{"role": "user", "content": question}]
            return tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)  # fmt: skip

        return with_template
    return lambda question: f"Question: {question}\nAnswer:"


def load_hf_directory(path: str | os.PathLike, device: str = "cpu", dtype=None) -> Policy:
    """A policy from a local Hugging Face checkpoint (``config.json``, weights, tokenizer files).

    Args:
        path: the directory (as written by ``save_pretrained``).
        device: torch device.
        dtype: torch dtype of the hooked model (default float32).

    Example:
        >>> policy = load_hf_directory("checkpoints/my-qwen2")               # doctest: +SKIP
        >>> policy.model.cfg.original_architecture                           # doctest: +SKIP
        'Qwen2ForCausalLM'
    """
    import torch
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not is_hf_directory(path):
        raise IpgkitError(
            f"{path} is not a Hugging Face checkpoint (no config.json with model_type)"
        )
    architecture = json.loads((path / "config.json").read_text()).get("architectures", ["?"])[0]
    if architecture not in CHECKED_ARCHITECTURES:
        warnings.warn(
            f"{architecture} goes through TransformerLens's converter, but ipgkit's tests check only "
            f"{CHECKED_ARCHITECTURES}; compare a few logits with the Hugging Face model",
            stacklevel=2,
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise IpgkitError(f"no usable tokenizer files in {path}: {error}") from error
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with _neutral_path(path) as readable:
        try:
            settings = loading.convert_hf_model_config(readable)
        except (NotImplementedError, ValueError, KeyError, AttributeError) as error:
            raise IpgkitError(
                f"TransformerLens cannot convert {architecture} from {path}: {error}"
            ) from error
        settings.update(device=device, tokenizer_name=None, dtype=dtype or torch.float32)
        config = HookedTransformerConfig(**settings)
        model = HookedTransformer(config)
        state = loading.get_pretrained_state_dict(readable, config, hf_model)
    model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)  # fmt: skip
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return Policy(model=model, tokenizer=tokenizer, name=path.name,
                  prompt_format=chat_prompt_format(tokenizer),
                  prepend_bos=tokenizer.bos_token_id is not None
                  and len(tokenizer.encode("")) > 0)  # fmt: skip


__all__ = ["CHECKED_ARCHITECTURES", "chat_prompt_format", "is_hf_directory", "load_hf_directory"]
