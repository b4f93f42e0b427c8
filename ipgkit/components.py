"""Which units (a hook point plus indices), and the one hook that scales them.

A :class:`ComponentSet` names units the way TransformerLens names activations:

- residual-stream neurons: ``blocks.L.hook_resid_post``, indices into d_model;
- MLP neurons: ``blocks.L.mlp.hook_post``, indices into d_mlp;
- SAE features: ``blocks.L.hook_resid_post.hook_sae_acts_post``, indices into d_sae;
- directions: orthonormal vectors at any hook (a control vector), the unit being the coordinate
  ``h . v`` along each direction.

:func:`scaling_hook` builds the single forward hook that every pipeline uses: IPG (a factor
alpha per batch row), steering (one gamma), training loops (whatever steering is active). It
replaces the selected units h by ``h' + factor * (h - h')`` (baseline h' is zero unless given) on
chosen positions:
``"all"``, ``"prompt"`` or ``"generated"``. Which positions are generated is set by the code that
lays the batch out (sampling or teacher-forced scoring) through :func:`sequence_layout`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ipgkit.errors import HookNameError, IpgkitError, close_matches

# the positions mask lives in its own foundation module; its names stay importable from here
from ipgkit.positions import (  # noqa: F401
    Positions,
    SequenceLayout,
    current_layout,
    position_mask,
    sequence_layout,
    set_layout_offset,
)

KINDS = ("resid", "mlp", "sae", "direction")


@dataclass(frozen=True)
class ComponentSet:
    """A set of units at one hook point.

    Attributes:
        hook_name: the TransformerLens hook whose last dimension holds the units.
        indices: unit indices into that dimension (or into ``directions``), or None for every unit
            (cheapest to scale).
        kind: ``"resid"``, ``"mlp"``, ``"sae"`` or ``"direction"``: used for labels and tidy tables.
        directions: for ``kind="direction"`` only, orthonormal rows [n_directions, width]; unit k is
            the coordinate of the activation along row k, and scaling it by gamma leaves the
            orthogonal complement untouched.
        gains: one factor per unit (>= 0) that steering multiplies gamma by, so that unit i moves
            by ``gamma * gains[i]``: learned per-unit gains
            (:func:`ipgkit.training.gains.learn_gains`). None: every unit moves by gamma.

    Example:
        >>> ComponentSet("blocks.2.hook_resid_post", (3, 17), kind="resid")
        ComponentSet(hook_name='blocks.2.hook_resid_post', indices=(3, 17), kind='resid')
    """

    hook_name: str
    indices: tuple[int, ...] | None = None
    kind: str = "resid"
    directions: Float[Tensor, "n_directions width"] | None = field(
        default=None, compare=False, repr=False
    )
    gains: tuple[float, ...] | None = field(default=None, repr=False)
    _known_width: int | None = field(default=None, compare=False, repr=False, init=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise IpgkitError(f"unknown component kind {self.kind!r}; choose one of {KINDS}")
        if self.indices is not None:
            indices = tuple(int(i) for i in self.indices)
            if len(set(indices)) != len(indices):
                raise IpgkitError(f"duplicate indices in ComponentSet at {self.hook_name}")
            if any(i < 0 for i in indices):
                raise IpgkitError(f"negative index in ComponentSet at {self.hook_name}: {indices}")
            object.__setattr__(self, "indices", indices)
        if (self.kind == "direction") != (self.directions is not None):
            raise IpgkitError("kind='direction' and a directions tensor go together")
        if self.directions is not None:
            directions = torch.as_tensor(self.directions, dtype=torch.float32).detach().cpu()
            if directions.ndim != 2 or directions.shape[0] == 0:
                raise IpgkitError(
                    f"directions must be [n_directions, width], got {tuple(directions.shape)}"
                )
            gram = directions @ directions.T
            if not torch.allclose(gram, torch.eye(len(directions)), atol=1e-4):
                raise IpgkitError(
                    "directions must be orthonormal rows (unit norm, pairwise orthogonal)"
                )
            object.__setattr__(self, "directions", directions)
        if self.gains is not None:
            gains = tuple(float(g) for g in self.gains)
            if not all(g >= 0 and g < float("inf") for g in gains):
                raise IpgkitError(f"gains must be finite and >= 0, got {gains}")
            if self.indices is not None and len(gains) != len(self.indices):
                raise IpgkitError(f"{len(gains)} gains for {len(self.indices)} units")
            object.__setattr__(self, "gains", gains)

    def __len__(self) -> int:
        """The number of units (a set over every unit knows it once validated on a model)."""
        if self.indices is not None or self.directions is not None:
            return len(self.indices if self.indices is not None else self.directions)
        if self._known_width is None:
            raise TypeError(f"{self.hook_name}: every unit; call .validate(model) for a length")
        return self._known_width

    def hook_width(self, model) -> int:
        """Size of the hook's last dimension on ``model`` (d_model, d_mlp or d_sae)."""
        resolve_hook(model, self.hook_name)
        if ".hook_sae_" in self.hook_name:
            sae_site, sae_hook = self.hook_name.split(".hook_sae_", 1)
            sae = getattr(model, "acts_to_saes", {}).get(sae_site)
            if sae is not None and sae_hook.startswith("acts"):
                return sae.cfg.d_sae
        return site_width(model, self.hook_name)

    def width(self, model) -> int:
        """How many units the set's indices address: the hook width, or the number of directions."""
        if self.directions is not None:
            return len(self.directions)
        return self.hook_width(model)

    def validate(self, model) -> ComponentSet:
        """Check the hook exists on ``model`` and every index is in range; returns self."""
        width = self.width(model)
        if self.directions is not None and self.directions.shape[1] != self.hook_width(model):
            raise IpgkitError(
                f"directions have width {self.directions.shape[1]} but {self.hook_name} has "
                f"{self.hook_width(model)}"
            )
        if self.indices is not None and self.indices and max(self.indices) >= width:
            raise IpgkitError(
                f"component index {max(self.indices)} is out of range for {self.hook_name} "
                f"(width {width}); valid indices are 0..{width - 1}"
            )
        if self.indices is None:  # frozen, but the width (for len) is a cache outside equality
            object.__setattr__(self, "_known_width", width)
            if self.gains is not None and len(self.gains) != width:
                raise IpgkitError(f"{len(self.gains)} gains for {width} units at {self.hook_name}")
        return self

    def gains_tensor(self) -> Float[Tensor, " n"] | None:
        """The per-unit gains as a float64 tensor (None without gains)."""
        return None if self.gains is None else torch.tensor(self.gains, dtype=torch.float64)

    def resolved(self, model) -> ComponentSet:
        """The same set with explicit indices (every unit when ``indices`` is None), validated."""
        self.validate(model)
        if self.indices is not None:
            return self
        return replace(self, indices=tuple(range(self.width(model))))

    def span(self) -> tuple[int, int] | None:
        """``(start, stop)`` when the indices are consecutive and increasing (e.g. every unit of a
        resolved set), so the units are a slice: a view instead of a gather."""
        if self.indices is None or self.directions is not None or not self.indices:
            return None
        start = self.indices[0]
        if self.indices != tuple(range(start, start + len(self.indices))):
            return None
        return start, start + len(self.indices)

    def index_tensor(self, device=None) -> Int[Tensor, " n"] | None:
        return None if self.indices is None else torch.tensor(self.indices, device=device)

    def basis(self, device=None, dtype=None) -> Float[Tensor, "n width"] | None:
        """The selected direction rows (None for unit components)."""
        if self.directions is None:
            return None
        rows = self.directions if self.indices is None else self.directions[list(self.indices)]
        return rows.to(device=device, dtype=dtype)

    def coordinates(self, values: Float[Tensor, "*batch width"]) -> Float[Tensor, "*batch n"]:
        """The units' values in ``values`` (an activation or a gradient at the hook).

        For unit components this selects the indexed columns; for directions it projects onto the
        orthonormal rows, which is also how a gradient with respect to the hook maps to a gradient
        with respect to the coordinates.
        """
        basis = self.basis(values.device, values.dtype)
        if basis is not None:
            return values @ basis.T
        span = self.span()
        if span is not None:
            return values[..., span[0] : span[1]]
        index = self.index_tensor(values.device)
        return values if index is None else values.index_select(-1, index)


def site_width(model, hook_name: str) -> int:
    """Width of a model activation by its hook name: d_mlp for MLP neurons, d_model otherwise
    (the residual stream and what an SAE reads there)."""
    if hook_name.endswith(("mlp.hook_post", "mlp.hook_pre")):
        return model.cfg.d_mlp
    return model.cfg.d_model


def resid_neurons(layer: int, indices: Sequence[int] | None = None) -> ComponentSet:
    """Residual-stream neurons after block ``layer`` (the IPG paper's setting)."""
    return ComponentSet(f"blocks.{layer}.hook_resid_post", _tuple(indices), kind="resid")


def mlp_neurons(layer: int, indices: Sequence[int] | None = None) -> ComponentSet:
    """Post-activation MLP neurons of block ``layer``."""
    return ComponentSet(f"blocks.{layer}.mlp.hook_post", _tuple(indices), kind="mlp")


def _tuple(indices):
    return None if indices is None else tuple(int(i) for i in indices)


#: the hook-name grammar: ``blocks.L.<hook>`` is in block L, ``blocks.L.hook_resid_post`` its output
_IN_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_BEFORE_BLOCKS = ("hook_embed", "hook_pos_embed", "hook_tokens")


def hook_layer(hook_name: str, n_layers: int) -> int:
    """The block a hook belongs to: L for ``blocks.L.*``, -1 for the embeddings (before every
    block), ``n_layers`` for anything after the blocks (``ln_final``, ``unembed``).

    Example:
        >>> hook_layer("blocks.2.mlp.hook_post", 4), hook_layer("ln_final.hook_normalized", 4)
        (2, 4)
    """
    in_block = _IN_BLOCK.match(hook_name)
    if in_block:
        return int(in_block.group(1))
    return -1 if hook_name.startswith(_BEFORE_BLOCKS) else n_layers


def resid_post_layer(hook_name: str) -> int | None:
    """L when ``hook_name`` is ``blocks.L.hook_resid_post`` (a block's output), else None."""
    match = _RESID_POST.match(hook_name)
    return int(match.group(1)) if match else None


def resolve_hook(model, hook_name: str):
    """The HookPoint called ``hook_name`` on ``model``; a clear error lists the closest names."""
    hook_dict = model.hook_dict
    if hook_name not in hook_dict:
        raise HookNameError(
            f"model has no hook point {hook_name!r}; closest names: "
            f"{close_matches(hook_name, hook_dict)}"
        )
    return hook_dict[hook_name]


# --- the one scaling hook -----------------------------------------------------------------------


def scaling_hook(
    components: ComponentSet,
    factor: float | Float[Tensor, " batch"],
    positions: Positions = "all",
    baseline: Float[Tensor, " n"] | float | None = None,
    gains: Float[Tensor, " n"] | None = None,
):
    """A TransformerLens forward hook: ``h[..., i] <- h'_i + factor * g_i * (h[..., i] - h'_i)``.

    Args:
        components: which units to scale.
        factor: one float, or one per batch row ([batch]); e.g. IPG's alpha grid, steering's gamma.
        positions: ``"all"``, ``"prompt"`` or ``"generated"`` tokens (the last two need an active
            :func:`sequence_layout`, which ipgkit's sampler and scorer set).
        baseline: h', zero by default; a scalar or one value per selected unit.
        gains: g, one factor per selected unit (1 when None), multiplying ``factor``; it may
            require grad, so that per-unit gains can be learned through this hook. Positions
            outside ``positions`` stay unscaled.

    Returns:
        ``hook(activation [batch, pos, width], hook) -> activation``.

    Example:
        >>> hook = scaling_hook(resid_neurons(1, [0, 5]), factor=2.0)
        >>> # model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_post", hook)])
    """
    if positions not in ("all", "prompt", "generated"):
        raise IpgkitError(f"positions must be 'all', 'prompt' or 'generated', got {positions!r}")
    index, basis, span = components.index_tensor(), components.basis(), components.span()
    factor_tensor = torch.as_tensor(factor, dtype=torch.float64)
    if not torch.isfinite(factor_tensor).all():
        raise IpgkitError(f"scaling factor must be finite, got {factor!r}")
    if gains is not None and (gains.ndim != 1 or not torch.isfinite(gains.detach()).all()):
        raise IpgkitError(
            f"gains must be one finite value per unit, got shape {tuple(gains.shape)}"
        )

    def hook(activation: torch.Tensor, hook) -> torch.Tensor:
        batch, length = activation.shape[:2]
        scale = factor_tensor.to(activation.device, activation.dtype)
        scale = scale.expand(batch)[:, None] if scale.ndim == 0 else _rows(scale, batch)[:, None]
        scale = scale.expand(batch, length)
        selected = None
        if positions != "all":
            layout = current_layout()
            if layout is None:
                raise IpgkitError(
                    f"positions={positions!r} needs ipgkit's sampler or scorer (no sequence layout "
                    "is active); use positions='all' with plain run_with_hooks"
                )
            selected = layout.selected(batch, length, positions, activation.device)
            scale = scale.masked_fill(~selected, 1.0)
        scale = scale[..., None]
        if gains is not None:
            scale = _with_gains(scale, gains, selected, activation, index, basis)
        if basis is not None:
            return _scaled_along(
                activation, basis.to(activation.device, activation.dtype), scale, baseline
            )
        if index is None or span == (0, activation.shape[-1]):
            return _scaled(activation, scale, baseline)
        if span is not None:  # a slice: no gather
            start, stop = span
            middle = _scaled(activation[..., start:stop], scale, baseline)
            return torch.cat([activation[..., :start], middle, activation[..., stop:]], dim=-1)
        index_on_device = index.to(activation.device)
        selected = activation.index_select(-1, index_on_device)
        return activation.index_copy(-1, index_on_device, _scaled(selected, scale, baseline))

    return hook


def _with_gains(scale, gains, selected, activation, index, basis) -> torch.Tensor:
    """[batch, pos, n] factors: the row factor times each unit's gain, 1 off the positions."""
    units = len(basis) if basis is not None else (len(index) if index is not None else None)
    units = activation.shape[-1] if units is None else units
    if gains.shape[0] != units:
        raise IpgkitError(f"{gains.shape[0]} gains for {units} units")
    scaled = scale * gains.to(activation.device, activation.dtype)
    return scaled if selected is None else torch.where(selected[..., None], scaled, 1.0)


def _rows(scale: torch.Tensor, batch: int) -> torch.Tensor:
    if scale.ndim != 1 or scale.shape[0] != batch:
        raise IpgkitError(f"per-row factor has shape {tuple(scale.shape)}, batch is {batch}")
    return scale


def _scaled(values: torch.Tensor, scale: torch.Tensor, baseline) -> torch.Tensor:
    if baseline is None:
        return values * scale
    baseline = torch.as_tensor(baseline, dtype=values.dtype, device=values.device)
    return baseline + scale * (values - baseline)


def _scaled_along(activation, basis, scale, baseline) -> torch.Tensor:
    """Scale the coordinates along orthonormal ``basis`` rows, leaving the complement untouched."""
    coordinates = activation @ basis.T
    if baseline is not None:
        coordinates = coordinates - torch.as_tensor(
            baseline, dtype=activation.dtype, device=activation.device
        )
    return activation + ((scale - 1) * coordinates) @ basis
