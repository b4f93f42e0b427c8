"""Saving a fine-tuned policy where others can load it: the embedded model's own folder
(safetensors + JSON, read back by ``load_model(dir)``), and for Llama and Qwen2 models a
Hugging Face ``save_pretrained`` folder that ``transformers`` loads (and so does ``load_model``).

TransformerLens keeps attention weights per head ([heads, d_model, d_head]) and MLP weights
transposed; the Hugging Face layout is the inverse of TransformerLens's own Llama/Qwen2
converters, applied to the unprocessed weights ipgkit loads (no folded LayerNorms, no centring).

Example:
    >>> run = grpo_train(policy, problems, task.correctness)                  # doctest: +SKIP
    >>> save_policy(policy, "runs/grpo/model")                                # doctest: +SKIP
    >>> AutoModelForCausalLM.from_pretrained("runs/grpo/model")               # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import einops
import torch

from ipgkit.errors import IpgkitError

from .arith import save_arith
from .policy import Policy

HF_EXPORTS = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def save_policy(policy: Policy, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write ``policy``'s weights to ``out_dir`` in the format ``load_model(out_dir)`` reads: the
    embedded model's folder for ``arith`` models, a ``save_pretrained`` folder (weights, config,
    tokenizer) for Llama and Qwen2 models. Returns ``out_dir``."""
    out_dir = Path(out_dir)
    architecture = policy.model.cfg.original_architecture
    if architecture == "ipgkit-arith":
        save_arith(policy.model, out_dir, extra or {})
    elif architecture in HF_EXPORTS:
        save_hf(policy, out_dir)
    else:
        raise IpgkitError(
            f"cannot export a {architecture} model: ipgkit writes the embedded model's folder and "
            f"Hugging Face folders for {HF_EXPORTS}; save model.state_dict() with safetensors"
        )
    return out_dir


def structural_zeros(model) -> list[str]:
    """TransformerLens parameters a Llama/Qwen2 model has no counterpart for (biases that are
    zero by construction). ipgkit freezes them on loading, so its training leaves them zero."""
    biased = model.cfg.original_architecture == "Qwen2ForCausalLM"
    grouped = "_" if model.cfg.n_key_value_heads is not None else ""
    names = ["unembed.b_U"]
    for index in range(model.cfg.n_layers):
        block = f"blocks.{index}."
        names += [f"{block}attn.b_O", f"{block}mlp.b_in", f"{block}mlp.b_out"]
        if not biased:
            names += [f"{block}attn.b_Q", f"{block}attn.{grouped}b_K", f"{block}attn.{grouped}b_V"]
    parameters = dict(model.named_parameters())
    return [name for name in names if name in parameters]


def save_hf(policy: Policy, out_dir: str | Path) -> Path:
    """A Hugging Face ``save_pretrained`` folder of a Llama or Qwen2 policy (safetensors)."""
    from transformers import AutoModelForCausalLM

    parameters = dict(policy.model.named_parameters())
    moved = [name for name in structural_zeros(policy.model) if parameters[name].any()]
    if moved:
        raise IpgkitError(
            f"{policy.model.cfg.original_architecture} has no place for {moved[:4]}"
            f"{' ...' if len(moved) > 4 else ''}, which are no longer zero; ipgkit's loaders "
            "freeze them, so something else trained them: zero them or save the state dict"
        )
    config = hf_config(policy.model.cfg)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    state = hf_state_dict(policy.model)
    skeleton.load_state_dict(state, strict=True, assign=True)
    out_dir = Path(out_dir)
    skeleton.save_pretrained(out_dir, safe_serialization=True)
    policy.tokenizer.save_pretrained(out_dir)
    return out_dir


def hf_config(cfg):
    """The ``transformers`` config of a Llama or Qwen2 HookedTransformer config."""
    from transformers import LlamaConfig, Qwen2Config

    settings = dict(
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_key_value_heads or cfg.n_heads,
        head_dim=cfg.d_head,
        vocab_size=cfg.d_vocab,
        max_position_embeddings=cfg.n_ctx,
        rms_norm_eps=cfg.eps,
        rope_theta=cfg.rotary_base,
        hidden_act="silu",
        tie_word_embeddings=False,  # fine-tuning in TransformerLens unties W_E and W_U
        torch_dtype=str(cfg.dtype).removeprefix("torch."),
    )
    if cfg.use_NTK_by_parts_rope:
        settings["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": cfg.NTK_by_parts_factor,
            "low_freq_factor": cfg.NTK_by_parts_low_freq_factor,
            "high_freq_factor": cfg.NTK_by_parts_high_freq_factor,
            "original_max_position_embeddings": cfg.NTK_original_ctx_len,
        }
    if cfg.original_architecture == "Qwen2ForCausalLM":
        return Qwen2Config(**settings, architectures=["Qwen2ForCausalLM"])
    return LlamaConfig(**settings, architectures=["LlamaForCausalLM"])


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """Hugging Face parameter names and layouts for a Llama/Qwen2 HookedTransformer."""
    cfg = model.cfg
    biased = cfg.original_architecture == "Qwen2ForCausalLM"
    state = {"model.embed_tokens.weight": model.embed.W_E, "model.norm.weight": model.ln_final.w}
    state["lm_head.weight"] = model.unembed.W_U.T
    for index, block in enumerate(model.blocks):
        prefix, attn = f"model.layers.{index}.", block.attn
        grouped = cfg.n_key_value_heads is not None
        keys = attn._W_K if grouped else attn.W_K
        values = attn._W_V if grouped else attn.W_V
        for name, weight in (("q", attn.W_Q), ("k", keys), ("v", values)):
            state[f"{prefix}self_attn.{name}_proj.weight"] = einops.rearrange(
                weight, "n m h -> (n h) m"
            )
        if biased:
            key_bias = attn._b_K if grouped else attn.b_K
            value_bias = attn._b_V if grouped else attn.b_V
            for name, bias in (("q", attn.b_Q), ("k", key_bias), ("v", value_bias)):
                state[f"{prefix}self_attn.{name}_proj.bias"] = bias.reshape(-1)
        state[f"{prefix}self_attn.o_proj.weight"] = einops.rearrange(attn.W_O, "n h m -> m (n h)")
        state[f"{prefix}input_layernorm.weight"] = block.ln1.w
        state[f"{prefix}post_attention_layernorm.weight"] = block.ln2.w
        state[f"{prefix}mlp.gate_proj.weight"] = block.mlp.W_gate.T
        state[f"{prefix}mlp.up_proj.weight"] = block.mlp.W_in.T
        state[f"{prefix}mlp.down_proj.weight"] = block.mlp.W_out.T
    return {name: value.detach().contiguous().clone() for name, value in state.items()}


__all__ = [
    "HF_EXPORTS",
    "hf_config",
    "hf_state_dict",
    "save_hf",
    "save_policy",
    "structural_zeros",
]
