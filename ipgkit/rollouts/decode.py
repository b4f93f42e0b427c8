"""The forward passes of sampling without TransformerLens's per-layer overhead, hooks still live.

TransformerLens 3.9 spends most of a one-token decode step outside the arithmetic: it projects
queries, keys and values with einsums over per-head weights, copies the MLP's and the output
projection's weights to contiguous memory at every call, repeats grouped-query keys and values
to every head, and materialises the [heads, query, length] pattern. While :func:`fast_decoding`
is active, each block's cached pass (the prompt, then each one-token step) instead runs the same
computation with

- queries, keys and values from one ``F.linear`` on weights arranged once per version of the
  model (re-arranged after a training step or ``load_state_dict``),
- TransformerLens's own rotary (``apply_rotary``, same positions under left padding), each new key
  rotated once and kept in the :class:`~ipgkit.rollouts.kv_cache.PreallocatedEntry`,
- ``scaled_dot_product_attention`` (for one token, with each key/value head's query heads as
  its queries; for the prompt, with the causal and padding mask and grouped-query attention), no
  repeated keys or values and no materialised pattern,
- the MLP's weights used in place (``F.linear`` on their transposed views),

and calls each hook point the block's own forward calls, in the same order and on tensors of the
same shapes, skipping those with nothing attached. Modules spliced in at a hook point (sae-lens
SAEs) are always called. So steering, IPG's scaled path and SAE splicing act on the fast step as
on TransformerLens's. Any pass where a hook sits inside the attention or a LayerNorm (queries,
keys, patterns, scales), and any pass without ipgkit's preallocated cache (scoring), runs
TransformerLens's own forward: it stays the reference the tests compare with.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens.components.mlps.gated_mlp import GatedMLP
from transformer_lens.components.mlps.mlp import MLP
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities.tensors import get_offset_position_ids

from ipgkit.memory import fused_attention_supported

from .arranged_weights import BlockWeights, arranged, block_weights, unembedding
from .kv_cache import PreallocatedEntry

#: hook points inside attention and LayerNorms that the fast step does not compute: a hook on any
#: of them sends that step to TransformerLens's forward
_ATTENTION_POINTS = (
    "hook_q",
    "hook_k",
    "hook_v",
    "hook_z",
    "hook_rot_q",
    "hook_rot_k",
    "hook_attn_scores",
    "hook_pattern",
    "hook_result",
)
_NORM_POINTS = ("hook_scale", "hook_normalized")


def block_supported(block) -> bool:
    """Whether :func:`fast_decoding` can run this block's cached passes (pre-norm, causal
    attention with plain scores, a dense or gated MLP with an elementwise activation)."""
    cfg = block.cfg
    return (
        fused_attention_supported(block.attn)
        and cfg.positional_embedding_type in ("standard", "rotary")
        and not cfg.use_attn_in
        and not cfg.use_split_qkv_input
        and not cfg.use_hook_mlp_in
        and not cfg.parallel_attn_mlp
        and not cfg.use_normalization_before_and_after
        and not cfg.ungroup_grouped_query_attention
        and cfg.clip_qkv is None
        and not getattr(cfg, "use_dynamic_ntk_rope", False)
        and cfg.original_architecture not in _post_norm_architectures()
        and (cfg.attn_only or (type(block.mlp) in (MLP, GatedMLP) and _elementwise(block.mlp)))
        and all(_own_forward(getattr(block, name, None)) for name in ("attn", "ln1", "ln2", "mlp"))
    )


def _own_forward(module) -> bool:
    """No forward of the user's own on the instance (ipgkit's in-place weight readers in
    :mod:`ipgkit.models.hf` compute the same as TransformerLens's and are allowed)."""
    if module is None:
        return True
    forward = vars(module).get("forward")
    return forward is None or getattr(
        getattr(forward, "__func__", forward), "same_as_transformer_lens", False
    )


def _post_norm_architectures() -> tuple[str, ...]:
    from transformer_lens.components import transformer_block

    return tuple(getattr(transformer_block, "POST_NORM_ARCHITECTURES", ()))


def _elementwise(mlp) -> bool:
    return not mlp.cfg.is_layer_norm_activation()


def _hooked(point) -> bool:
    """Whether calling ``point`` does anything: a hook point with hooks, or a spliced module."""
    if not isinstance(point, HookPoint):
        return True
    return bool(point._forward_hooks or point._forward_pre_hooks)


def _through(point, value: Tensor) -> Tensor:
    return point(value) if _hooked(point) else value


def _needs_reference(block) -> bool:
    """A hook the fast step would skip: run TransformerLens's forward for this step."""
    points = [getattr(block.attn, name, None) for name in _ATTENTION_POINTS]
    for norm in (block.ln1, getattr(block, "ln2", None)):
        points += [getattr(norm, name, None) for name in _NORM_POINTS]
    return any(point is not None and _hooked(point) for point in points)


def _attention_step(block, weights: BlockWeights, x: Tensor, entry, attention_mask):
    """Attention of ``pos`` new tokens per row (the prompt, then one per decode step) against
    the cache, appending their keys and values."""
    attention, cfg = block.attn, block.cfg
    batch, pos, d_head = x.shape[0], x.shape[1], cfg.d_head
    qkv = F.linear(x, weights.qkv, weights.qkv_bias).view(batch, pos, -1, d_head)
    heads, kv_heads = weights.heads, weights.kv_heads
    q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=2)
    start = entry.past_keys.shape[1]
    keys, values = entry.append(k, v)
    end = keys.shape[1]
    if cfg.positional_embedding_type == "rotary":
        # queries and the new keys rotated together, the new keys kept so that each key is
        # rotated once
        rotated = _rotary(block, qkv[:, :, : heads + kv_heads], start, end, attention_mask)
        q = rotated[:, :, :heads]
        entry._rotated[:, start:end] = rotated[:, :, heads:]
        entry._rotated_length = end
        keys = entry._rotated[:, :end]
    allowed = None
    if attention_mask is not None:
        allowed = attention_mask[:, None, None, :end].to(torch.bool)
    scale = 1.0 / attention.attn_scale
    if pos == 1:
        # The query heads that share a key/value head (head h reads kv head h // group, as
        # TransformerLens's repeat_interleave has it) go in as that head's query positions: one
        # attention over [batch, kv_heads, group] queries, 1.3-2x faster on the CPU than SDPA's
        # own grouped-query path at SmolLM2's shapes, and no key or value is repeated.
        group = heads // kv_heads
        z = F.scaled_dot_product_attention(
            q.reshape(batch, kv_heads, group, d_head),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=allowed,
            scale=scale,
        )  # [batch, kv_heads, group, d_head]
        return F.linear(z.reshape(batch, 1, heads * d_head), weights.out, weights.out_bias)
    # query i sits at position start + i and sees the keys up to it (and no padding)
    positions = torch.arange(end, device=x.device)
    causal = positions[None, :] <= positions[start:, None]  # [pos, end]
    allowed = causal if allowed is None else allowed & causal
    z = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        keys.transpose(1, 2),
        values.transpose(1, 2),
        attn_mask=allowed,
        scale=scale,
        enable_gqa=kv_heads != heads,
    )  # [batch, heads, pos, d_head]
    # a padding query sees no key: zeros, as TransformerLens's pattern (NaN -> 0) gives
    z = z.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    z = z.transpose(1, 2).reshape(batch, pos, heads * d_head)
    return F.linear(z, weights.out, weights.out_bias)


def _rotary(block, x: Tensor, start: int, end: int, attention_mask) -> Tensor:
    """TransformerLens's ``apply_rotary`` of ``x`` [batch, pos, heads, d_head] at positions
    ``start:end`` (offset by the left padding, as TransformerLens has it), with the cos/sin rows
    looked up once per pass for all the blocks whose rotary tables are equal (the per-layer
    look-up, a cumulative sum over the mask and two gathers, cost about as much as the rotation)."""
    attention = block.attn
    memo, source = block._ipgkit_rotary
    if end > min(source.rotary_cos.shape[0], attention.rotary_cos.shape[0]):
        # TransformerLens extends its tables here; the class's method (rotate_new_keys_only
        # patches the instance's)
        mask = None if attention_mask is None else attention_mask[:, :end]
        return type(attention).apply_rotary(attention, x, start, mask)
    key = (start, end, None if attention_mask is None else attention_mask.data_ptr())
    if memo.get("pass") != key:  # a new pass: the previous one's rows are not needed again
        memo.clear()
        memo["pass"] = key
    rows = memo.get(id(source))
    if rows is None:
        if attention_mask is None:
            rows = tuple(t[None, start:end, None] for t in (source.rotary_cos, source.rotary_sin))
        else:
            ids = get_offset_position_ids(start, attention_mask[:, :end])
            rows = tuple(t[ids, None, :] for t in (source.rotary_cos, source.rotary_sin))
        memo[id(source)] = rows
    cos, sin = rows
    rotary_dim = cos.shape[-1]
    x_rot = x[..., :rotary_dim]
    rotated = x_rot * cos + attention.rotate_every_two(x_rot) * sin
    return rotated if rotary_dim == x.shape[-1] else torch.cat([rotated, x[..., rotary_dim:]], -1)


def _rotary_sources(blocks) -> list:
    """For each block, the first block's attention whose rotary tables equal its own (most
    models have one table for all layers; Gemma's local and global layers have two)."""
    sources: list = []
    chosen = []
    for block in blocks:
        attention = block.attn
        match = next(
            (
                s
                for s in sources
                if s.rotary_cos.shape == attention.rotary_cos.shape
                and torch.equal(s.rotary_cos, attention.rotary_cos)
                and torch.equal(s.rotary_sin, attention.rotary_sin)
            ),
            None,
        )
        if match is None:
            sources.append(attention)
            match = attention
        chosen.append(match)
    return chosen


def _mlp_step(mlp, weights: BlockWeights, x: Tensor) -> Tensor:
    """The block's MLP on the arranged weights."""
    arranged = weights.mlp_in is not None
    w_in = weights.mlp_in if arranged else mlp.W_in.T
    w_out = weights.mlp_out if arranged else mlp.W_out.T
    if isinstance(mlp, GatedMLP):
        pre = _through(mlp.hook_pre, F.linear(x, weights.mlp_gate if arranged else mlp.W_gate.T))
        pre_linear = _through(mlp.hook_pre_linear, F.linear(x, w_in))
        post = mlp.act_fn(pre) * pre_linear
        if weights.mlp_in_bias is not None:
            post = post + weights.mlp_in_bias
        post = _through(mlp.hook_post, post)
    else:
        pre = _through(mlp.hook_pre, F.linear(x, w_in, weights.mlp_in_bias))
        post = _through(mlp.hook_post, mlp.act_fn(pre))
    return F.linear(post, w_out, weights.mlp_out_bias)


def _block_step(
    self,
    resid_pre,
    shortformer_pos_embed=None,
    past_kv_cache_entry=None,
    attention_mask=None,
):
    """A block's forward: the fast cached pass where it applies, TransformerLens's otherwise."""
    if (
        shortformer_pos_embed is not None
        or not isinstance(past_kv_cache_entry, PreallocatedEntry)
        or past_kv_cache_entry.frozen
        or _needs_reference(self)
    ):
        return self._ipgkit_reference_forward(
            resid_pre, shortformer_pos_embed, past_kv_cache_entry, attention_mask
        )
    x = _through(self.hook_resid_pre, resid_pre)
    attention = _attention_step(
        self, self._ipgkit_weights, self.ln1(x), past_kv_cache_entry, attention_mask
    )
    attention = _through(self.hook_attn_out, attention)
    if self.cfg.attn_only:
        return _through(self.hook_resid_post, x + attention)
    mid = _through(self.hook_resid_mid, x + attention)
    mlp_out = _mlp_step(self.mlp, self._ipgkit_weights, self.ln2(mid))
    mlp_out = _through(self.hook_mlp_out, mlp_out)
    return _through(self.hook_resid_post, mid + mlp_out)


def final_logits(model, resid: Tensor) -> Tensor:
    """Logits of the last position of ``resid`` [batch, pos, d_model]: ``ln_final`` then the
    unembedding, on the weight :func:`fast_decoding` arranged (TransformerLens's ``Unembed``
    copies ``W_U``, d_model x d_vocab, at every call) or through the module outside it."""
    last = model.ln_final(resid[:, -1:])
    unembed = model.unembed
    arranged = getattr(model, "_ipgkit_unembed", None)
    if arranged is None or not _own_forward(unembed):
        return unembed(last)
    return _through(
        unembed.hook_out, F.linear(_through(unembed.hook_in, last), arranged, unembed.b_U)
    )


@contextlib.contextmanager
def fast_decoding(model) -> Iterator[None]:
    """Inside this block, every supported block of ``model`` runs its cached passes fast and
    :func:`final_logits` unembeds on an arranged weight (see the module docstring).

    The weights are arranged on entry, or taken from the last arrangement if no parameter has
    changed since (see :func:`~ipgkit.rollouts.arranged_weights.arranged` for the memory this
    keeps), so the model must not change inside.

    Example:
        >>> with torch.inference_mode(), fast_decoding(policy.model):
        ...     ...  # TransformerLens forwards with a PreallocatedCache
    """
    patched = []
    with torch.no_grad():
        model._ipgkit_unembed = arranged(model.unembed, lambda: unembedding(model.unembed))
        blocks = [b for b in model.blocks if block_supported(b) and "forward" not in vars(b)]
        rotary = model.cfg.positional_embedding_type == "rotary"
        sources = _rotary_sources(blocks) if rotary else [None] * len(blocks)
        memo: dict = {}  # the current pass's cos/sin rows, shared by the blocks
        for block, source in zip(blocks, sources, strict=True):
            block._ipgkit_rotary = (memo, source)
            block._ipgkit_weights = arranged(block, lambda block=block: block_weights(block))
            block._ipgkit_reference_forward = block.forward
            block.forward = types.MethodType(_block_step, block)
            patched.append(block)
    try:
        yield
    finally:
        del model._ipgkit_unembed
        for block in patched:
            del block.forward, block._ipgkit_reference_forward, block._ipgkit_weights
            del block._ipgkit_rotary
