"""Patches to TransformerLens 3.9's KV cache that make sampling O(1) work per generated token.

:class:`PreallocatedCache` writes keys, values and the attention mask into buffers sized for the
whole generation (TransformerLens concatenates at every step); :func:`rotate_new_keys_only` rotates
each cached key once for rotary models (TransformerLens re-rotates the whole cache every step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry


class PreallocatedEntry(TransformerLensKeyValueCacheEntry):
    """A layer's KV cache that writes into buffers sized for the whole generation.

    TransformerLens's entry concatenates the full cache with each new token (O(length) copying per
    step); this one writes the new keys and values in place and hands out views. For rotary models
    it also keeps the rotated keys (see :func:`rotate_new_keys_only`).
    """

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        self._keys, self._values, self._length, self.frozen = keys, values, 0, False
        self._rotated, self._rotated_length = torch.empty_like(keys), 0

    @property
    def past_keys(self) -> Tensor:
        return self._keys[:, : self._length]

    @property
    def past_values(self) -> Tensor:
        return self._values[:, : self._length]

    def append(self, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
        end = self._length + new_keys.shape[1]
        self._keys[:, self._length : end] = new_keys
        self._values[:, self._length : end] = new_values
        if not self.frozen:
            self._length = end
        return self._keys[:, :end], self._values[:, :end]


class PreallocatedCache(TransformerLensKeyValueCache):
    """TransformerLens's KV cache with preallocated per-layer buffers and attention mask."""

    @classmethod
    def allocate(cls, cfg, device, batch: int, capacity: int) -> PreallocatedCache:
        heads = cfg.n_key_value_heads or cfg.n_heads
        shape = (batch, capacity, heads, cfg.d_head)
        entries = [
            PreallocatedEntry(
                torch.empty(shape, dtype=cfg.dtype, device=device),
                torch.empty(shape, dtype=cfg.dtype, device=device),
            )
            for _ in range(cfg.n_layers)
        ]
        cache = cls(
            entries=entries,
            previous_attention_mask=torch.empty((batch, 0), dtype=torch.long, device=device),
        )
        cache._mask = torch.zeros((batch, capacity), dtype=torch.long, device=device)
        return cache

    def append_attention_mask(self, attention_mask: Tensor) -> Tensor:
        start = self.previous_attention_mask.shape[1]
        end = start + attention_mask.shape[1]
        self._mask[:, start:end] = attention_mask
        updated = self._mask[:, :end]
        if not self.frozen:
            self.previous_attention_mask = updated
        return updated


@contextlib.contextmanager
def rotate_new_keys_only(model, cache: PreallocatedCache) -> Iterator[None]:
    """Rotate each cached key once, not once per generated token.

    TransformerLens 3.9 caches un-rotated keys and re-applies rotary to the whole cache at every
    step and layer: O(length) work per token that dominated decoding. While sampling, each layer's
    ``apply_rotary``, when handed that layer's own key buffer, rotates only the positions appended
    since the last call (TransformerLens's own function, same offsets and mask) and returns the
    stored rotated keys. Any other call (queries, expanded GQA keys) goes to the original.
    """
    if model.cfg.positional_embedding_type != "rotary":
        yield
        return
    patched = []
    for block, entry in zip(model.blocks, cache.entries, strict=True):
        attention = block.attn
        original = attention.apply_rotary

        def apply_rotary(
            x, past_kv_pos_offset=0, attention_mask=None, _original=original, _entry=entry
        ):
            if past_kv_pos_offset != 0 or x.data_ptr() != _entry._keys.data_ptr():
                return _original(x, past_kv_pos_offset, attention_mask)
            start, end = _entry._rotated_length, x.shape[1]
            mask = None if attention_mask is None else attention_mask[:, :end]
            _entry._rotated[:, start:end] = _original(x[:, start:end], start, mask)
            _entry._rotated_length = end
            return _entry._rotated[:, :end]

        attention.apply_rotary = apply_rotary
        patched.append(attention)
    try:
        yield
    finally:
        for attention in patched:
            del attention.apply_rotary
