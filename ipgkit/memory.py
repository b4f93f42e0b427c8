"""Bounded memory for teacher-forced passes with gradient (IPG's engine, long chains of thought).

A TransformerLens forward/backward over one row of T tokens holds, per block, the activations its
backward needs (linear in T) and the attention scores and pattern, [heads, T, T] (quadratic: 3 GB
per block for one 8k-token row of a 12-head model). A :class:`MemoryBudget` bounds the whole pass:

- **fused attention** (:func:`fused_attention`):
  ``torch.nn.functional.scaled_dot_product_attention``
  with a causal flag computes the same softmax(q k^T / scale) v without materialising [T, T]
  (on CPU as on CUDA), and its backward keeps only the log-sum-exp;
- **block checkpointing** (:func:`checkpointed_blocks`): blocks above the one holding the
  attributed activation keep only their input; the backward recomputes them one at a time;
- **token-budgeted chunks** (:meth:`MemoryBudget.split`): as many (rollout, alpha) rows per pass as
  the budget holds at their padded length, and logits ``position_chunk_size`` positions at a time.

Memory then grows linearly in the completion length, and rows per pass shrink to keep the peak
under the budget. The budget covers the pass's working memory, not the model's weights.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ipgkit.components import hook_layer
from ipgkit.errors import IpgkitError
from ipgkit.positions import current_layout, sequence_layout

# Resident memory per token of one row in a fused, checkpointed pass, in elements, fitted to peak
# RSS on CPU (glibc malloc, whose freed blocks stay resident: about 2.5x the live tensors) over
# d_model 256-512, d_mlp 1k-4k, 6-12 layers, 1k-4k tokens: each layer holds ~14 d_model (its
# checkpointed input plus allocator slack), the hooked and the recomputed block ~30 d_model and
# ~4 d_mlp, the attributed hook ~4 copies of its width.
_PER_LAYER_D_MODEL = 14
_BLOCKS_D_MODEL = 30
_BLOCKS_D_MLP = 4
_HOOK_COPIES = 4
# float32 logits, log-softmax and their gradients per position of a logits chunk, with slack
_LOGIT_COPIES = 12
_SAFETY = 1.25
_MAX_POSITION_CHUNK = 256
# TransformerLens normalises q and k of these inside its attention forward
_QK_NORM_ARCHITECTURES = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


@dataclass(frozen=True)
class MemoryBudget:
    """How much working memory one teacher-forced pass with gradient may use.

    Attributes:
        mib: the budget in MiB (2**20 bytes) for activations, attention and logits of one pass,
            on top of the model's weights and the inputs. Rows per pass shrink (down to one)
            as completions grow; a single row that needs more is refused with the size it needs.
    """

    mib: float

    def __post_init__(self) -> None:
        number = isinstance(self.mib, int | float) and not isinstance(self.mib, bool)
        if not (number and math.isfinite(self.mib) and self.mib > 0):
            raise IpgkitError(f"memory budget must be a positive number of MiB, got {self.mib!r}")

    @property
    def bytes(self) -> int:
        return int(self.mib * 2**20)

    def position_chunk_size(self, cfg) -> int:
        """Positions per logits chunk: at most a quarter of the budget for one row's logits."""
        per_position = cfg.d_vocab * 4 * _LOGIT_COPIES
        return max(1, min(_MAX_POSITION_CHUNK, self.bytes // (4 * per_position)))

    def row_bytes(self, cfg, width: int, units: int = 0) -> int:
        """Estimated peak resident bytes of one row of ``width`` tokens in a fused, checkpointed
        pass with gradient. ``units`` is the attributed hook's width (its original, scaled and
        gradient copies are kept in float32)."""
        elements = (
            _PER_LAYER_D_MODEL * cfg.n_layers * cfg.d_model
            + _BLOCKS_D_MODEL * cfg.d_model
            + _BLOCKS_D_MLP * (cfg.d_mlp or 0)
            + _HOOK_COPIES * units
        )
        logits = self.position_chunk_size(cfg) * cfg.d_vocab * 4 * _LOGIT_COPIES
        return int(_SAFETY * (width * elements * 4 + logits))

    def split(
        self,
        chunks: Sequence[Sequence[int]],
        widths: Sequence[int],
        cfg,
        units: int = 0,
    ) -> list[list[int]]:
        """Split row chunks (kept in order) so each fits the budget at its longest row's width.

        Example (a model where one 4000-token row takes over half of 512 MiB):
            >>> MemoryBudget(512).split([[0, 1, 2, 3]], [100, 100, 4000, 4000], model.cfg)
            [[0, 1], [2], [3]]                                                 # doctest: +SKIP
        """
        fitted: list[list[int]] = []
        for chunk in chunks:
            current: list[int] = []
            for row in chunk:
                width = max([widths[r] for r in current] + [widths[row]])
                if current and (len(current) + 1) * self.row_bytes(cfg, width, units) > self.bytes:
                    fitted.append(current)
                    current = []
                needed = self.row_bytes(cfg, widths[row], units)
                if needed > self.bytes:
                    raise IpgkitError(
                        f"memory budget of {self.mib:g} MiB is below the {needed / 2**20:.0f} MiB "
                        f"one row of {widths[row]} tokens needs: raise the budget"
                    )
                current.append(row)
            if current:
                fitted.append(current)
        return fitted


def as_budget(budget: MemoryBudget | float | None) -> MemoryBudget | None:
    """A :class:`MemoryBudget` from a budget, a size in MiB, or None (no budget)."""
    if budget is None or isinstance(budget, MemoryBudget):
        return budget
    return MemoryBudget(budget)


def gradient_block(hook_name: str, n_layers: int) -> int:
    """Index of the block where a hook's gradient starts: blocks above it can be checkpointed.

    Hooks before the blocks (embeddings) give -1, hooks after them (``ln_final``) give n_layers.
    """
    return hook_layer(hook_name, n_layers)


# --- fused attention ----------------------------------------------------------------------------


def fused_attention_supported(attention) -> bool:
    """Whether an attention module's scores are plain causal ``q k^T / attn_scale`` (no alibi,
    relative bias, local window, soft cap, sinks, QK-norm, log-n scaling or per-head result hook),
    which is what :func:`fused_attention` reproduces."""
    cfg = attention.cfg
    return (
        cfg.positional_embedding_type in ("standard", "rotary", "shortformer")
        and (attention._attention_dir_override or cfg.attention_dir) == "causal"
        and getattr(attention, "attn_type", "global") == "global"
        and not cfg.attn_scores_soft_cap > 0
        and not cfg.use_attention_sinks
        and not cfg.use_logn_attn
        and not cfg.use_attn_result
        and not cfg.load_in_4bit
        and not getattr(cfg, "use_qk_norm", False)
        and cfg.original_architecture not in _QK_NORM_ARCHITECTURES
    )


def _right_padded_or_none(attention_mask) -> bool:
    if attention_mask is None:
        return True
    mask = attention_mask.bool()
    # real tokens first, padding only at the end: a plain causal mask then never lets a real
    # query see padding, so the result at real positions is exact
    return bool((mask[:, 1:] <= mask[:, :-1]).all()) and bool(mask[:, 0].all())


def _observed(attention) -> bool:
    """Hooks on the attention scores or pattern need the explicit [T, T] tensors."""
    return any(
        point.fwd_hooks or point.bwd_hooks
        for point in (attention.hook_attn_scores, attention.hook_pattern)
    )


def _fused_forward(
    self,
    query_input,
    key_input,
    value_input,
    past_kv_cache_entry=None,
    additive_attention_mask=None,
    attention_mask=None,
    position_bias=None,
):
    """TransformerLens's attention forward with the same hook points except ``hook_attn_scores``
    and ``hook_pattern``, the pattern and its product with v fused into one SDPA call. Anything
    else (a KV cache, left padding, extra masks or biases, hooks on the pattern) runs TL's own."""
    if (
        past_kv_cache_entry is not None
        or additive_attention_mask is not None
        or position_bias is not None
        or not _right_padded_or_none(attention_mask)
        or _observed(self)
    ):
        return self._ipgkit_eager_forward(
            query_input,
            key_input,
            value_input,
            past_kv_cache_entry,
            additive_attention_mask,
            attention_mask,
            position_bias,
        )
    q, k, v = self.calculate_qkv_matrices(query_input, key_input, value_input)
    if self.cfg.clip_qkv is not None:
        q, k, v = (x.clamp(min=-self.cfg.clip_qkv, max=self.cfg.clip_qkv) for x in (q, k, v))
    if self.cfg.positional_embedding_type == "rotary":
        q = self.hook_rot_q(self.apply_rotary(q, 0, attention_mask))
        k = self.hook_rot_k(self.apply_rotary(k, 0, attention_mask))
    grouped = (
        not getattr(self.cfg, "ungroup_grouped_query_attention", False) and k.shape[2] != q.shape[2]
    )
    z = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.to(q.dtype).transpose(1, 2),
        is_causal=True,
        scale=1.0 / float(self.attn_scale),
        enable_gqa=grouped,
    )
    z = self.hook_z(z.transpose(1, 2))
    w = self.W_O.reshape(self.cfg.n_heads * self.cfg.d_head, self.cfg.d_model)
    return F.linear(z.reshape(*z.shape[:2], -1).to(w.dtype), w.T, self.b_O)


@contextlib.contextmanager
def fused_attention(model) -> Iterator[None]:
    """Compute attention with ``scaled_dot_product_attention`` in every block that supports it.

    Equal to TransformerLens's attention at every real (non-padding) position up to float
    rounding, with memory linear in the sequence length. Passes with a KV cache, left padding or
    hooks on ``hook_attn_scores``/``hook_pattern`` use TL's own attention.

    Example:
        >>> with fused_attention(policy.model):
        ...     logits = policy.model(tokens)                                 # doctest: +SKIP
    """
    patched = []
    for block in model.blocks:
        attention = block.attn
        if not fused_attention_supported(attention) or "forward" in vars(attention):
            continue
        attention._ipgkit_eager_forward = attention.forward
        attention.forward = types.MethodType(_fused_forward, attention)
        patched.append(attention)
    try:
        yield
    finally:
        for attention in patched:
            del attention.forward
            del attention._ipgkit_eager_forward


# --- block checkpointing ------------------------------------------------------------------------


@contextlib.contextmanager
def checkpointed_blocks(model, above: int) -> Iterator[None]:
    """Keep only the input of each block with index > ``above`` for the backward pass, which
    recomputes the block (hooks included, under the sequence layout of its forward).

    The block holding a hook that creates the gradient's leaf must not be checkpointed (its
    recompute would make a new leaf): pass that block's index as ``above``.
    """
    patched = []
    for index, block in enumerate(model.blocks):
        if index <= above or "forward" in vars(block):
            continue
        block.forward = types.MethodType(_checkpointed_forward(block.forward), block)
        patched.append(block)
    try:
        yield
    finally:
        for block in patched:
            del block.forward


def _checkpointed_forward(forward):
    def run(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint_in_layout(forward, *args, **kwargs)

    return run


def checkpoint_in_layout(function, *args, **kwargs):
    """``torch.utils.checkpoint`` (non-reentrant) whose recompute in the backward pass runs under
    the sequence layout active at the forward, so position-dependent hooks act the same twice."""
    layout = current_layout()

    def replay(*args, **kwargs):
        if layout is None:
            return function(*args, **kwargs)
        with sequence_layout(layout):
            return function(*args, **kwargs)

    return checkpoint(replay, *args, use_reentrant=False, **kwargs)


@contextlib.contextmanager
def bounded_passes(model, gradient_from_block: int) -> Iterator[None]:
    """:func:`fused_attention` and :func:`checkpointed_blocks` above ``gradient_from_block``,
    for the forward *and* the backward of a budgeted pass (keep the backward inside)."""
    with fused_attention(model), checkpointed_blocks(model, gradient_from_block):
        yield


__all__ = [
    "MemoryBudget",
    "as_budget",
    "bounded_passes",
    "checkpoint_in_layout",
    "checkpointed_blocks",
    "fused_attention",
    "fused_attention_supported",
    "gradient_block",
]
