"""The weights the fast forward passes of :mod:`ipgkit.rollouts.decode` read, arranged once per
version of the model: each projection in the memory layout that multiplies fastest, kept outside
the model until one of its parameters changes."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor
from transformer_lens.components.mlps.gated_mlp import GatedMLP


@dataclass
class BlockWeights:
    """One block's projections, arranged once per version of its weights, each in the memory
    layout that BLAS streams fastest on 2 CPU cores at SmolLM2's shapes (measured side by side,
    batches of 8 and 32; ``hf_generate`` 1.08x -> 1.14x of HF at batch 32 for the attention's):

    - the MLP's as ``nn.Linear`` holds them ([out, in], contiguous), which TransformerLens would
      otherwise copy at every call. A gated MLP keeps its gate and input projections apart: one
      [2 d_mlp, d_model] product ran at 0.69x the speed of the two at batch 8 (equal at 32);
    - the attention's [in, out] (TransformerLens's own ``W_O``, a view), read as the transposed
      view ``F.linear`` takes: 1.3-1.7x the [out, in] layout's speed for these shapes.

    Biases that are all zero (TransformerLens creates them for models without biases) are None:
    a bias-free product is a plain matrix product rather than ``addmm``."""

    qkv: Tensor  # [(heads + 2 kv_heads) * d_head, d_model], a transposed contiguous [in, out]
    qkv_bias: Tensor | None  # [(heads + 2 kv_heads) * d_head]
    out: Tensor  # [d_model, heads * d_head], a view of W_O [heads * d_head, d_model]
    out_bias: Tensor | None  # [d_model]
    heads: int
    kv_heads: int
    # on the CPU: [d_mlp, d_model] (the gate's too, for a gated MLP) and [d_model, d_mlp]; None
    # elsewhere (the MLP's own weights, read in place)
    mlp_gate: Tensor | None
    mlp_in: Tensor | None
    mlp_out: Tensor | None
    mlp_in_bias: Tensor | None  # [d_mlp]
    mlp_out_bias: Tensor | None  # [d_model]


def block_weights(block) -> BlockWeights:
    attention, cfg = block.attn, block.cfg
    grouped = hasattr(attention, "_W_K")
    w_k = attention._W_K if grouped else attention.W_K
    w_v = attention._W_V if grouped else attention.W_V
    b_k = attention._b_K if grouped else attention.b_K
    b_v = attention._b_V if grouped else attention.b_V
    # [heads, d_model, d_head] -> [d_model, heads * d_head]
    weights = [w.permute(1, 0, 2).reshape(cfg.d_model, -1) for w in (attention.W_Q, w_k, w_v)]
    mlp_gate = mlp_in = mlp_out = mlp_in_bias = mlp_out_bias = None
    if not cfg.attn_only:
        mlp = block.mlp
        mlp_in_bias, mlp_out_bias = _unless_zero(mlp.b_in), _unless_zero(mlp.b_out)
        if mlp.W_in.device.type == "cpu":  # elsewhere the MLP reads its weights in place
            mlp_in, mlp_out = mlp.W_in.T.contiguous(), mlp.W_out.T.contiguous()
            if isinstance(mlp, GatedMLP):
                mlp_gate = mlp.W_gate.T.contiguous()
    qkv_bias = torch.cat([b.reshape(-1) for b in (attention.b_Q, b_k, b_v)])
    return BlockWeights(
        qkv=torch.cat(weights, dim=1).T,
        qkv_bias=_unless_zero(qkv_bias),
        out=attention.W_O.reshape(-1, cfg.d_model).T,
        out_bias=_unless_zero(attention.b_O),
        heads=attention.W_Q.shape[0],
        kv_heads=w_k.shape[0],
        mlp_gate=mlp_gate,
        mlp_in=mlp_in,
        mlp_out=mlp_out,
        mlp_in_bias=mlp_in_bias,
        mlp_out_bias=mlp_out_bias,
    )


def _unless_zero(bias: Tensor) -> Tensor | None:
    """``bias``, or None when every entry is zero (adding it would change nothing)."""
    return bias if bool(bias.any()) else None


def unembedding(unembed) -> Tensor:
    """``W_U`` as [d_vocab, d_model]: contiguous on the CPU, a view on CUDA."""
    weight = unembed.W_U.T
    return weight.contiguous() if weight.device.type == "cpu" else weight


def arranged(module, arrange):
    """``arrange()``, kept on ``module`` until one of its parameters changes (a training step,
    ``load_state_dict``, ``.to()``): repeated sampling, as in GRPO or the experiments, arranges
    once per version of the weights rather than once per call. The price is a second copy of
    the arranged matrices while the model lives; on CUDA only the attention's are arranged."""
    version = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in module.parameters())
    kept = _ARRANGED.get(module)
    if kept is not None and kept[0] == version:
        return kept[1]
    _ARRANGED.pop(module, None)  # free the old copy before making the new one
    value = arrange()
    _ARRANGED[module] = (version, value)
    return value


#: arranged weights per module, outside the module so that copying a model (Policy.clone) does
#: not copy them, and dropped with the module
_ARRANGED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
