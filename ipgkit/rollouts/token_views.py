"""Per-token values of units along rollouts, and their coloured-token views.

:class:`TokenActivations` holds a unit's activation at every position of chosen rollouts (what
:func:`token_activations` reads through the teacher-forced pass); IPG's per-token attribution
(:class:`ipgkit.attribution.TokenAttribution`) adds each position's share of the unit's score.
Notebooks get circuitsvis's ``colored_tokens`` when it is installed and plain HTML otherwise; the
HTML report always uses the plain form, which needs no network at view time.
"""

from __future__ import annotations

import html
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ipgkit.components import ComponentSet
from ipgkit.errors import IpgkitError

Quantity = Literal["contribution", "activation"]


def colour(value: float, scale: float) -> str:
    """Red for positive, blue for negative, white at zero; ``scale`` maps to full colour."""
    strength = 0.0 if scale <= 0 else max(-1.0, min(1.0, value / scale))
    fade = int(255 * (1 - abs(strength)))
    return f"rgb(255,{fade},{fade})" if strength >= 0 else f"rgb({fade},{fade},255)"


def tokens_html(
    tokens: Sequence[str],
    values: Sequence[float],
    scale: float | None = None,
    start: int = 0,
    stop: int | None = None,
    marked: int | None = None,
) -> str:
    """``<span>`` per token coloured by its value (title: position and value), positions
    ``start .. stop``; the token at ``marked`` is outlined."""
    values = [float(v) for v in values]
    stop = len(tokens) if stop is None else min(stop, len(tokens))
    shown = values[start:stop]
    scale = scale if scale is not None else max((abs(v) for v in shown), default=0.0)
    spans = []
    for position in range(start, stop):
        text = html.escape(tokens[position]).replace("\n", "\u21b5<br>")
        value = values[position]
        outline = ";outline:2px solid #222" if position == marked else ""
        spans.append(
            f'<span class="tok" title="position {position}: {value:+.4g}" style="background:'
            f'{colour(value, scale)};font-family:monospace;white-space:pre{outline}">{text}</span>'
        )
    return "".join(spans)


def has_circuitsvis() -> bool:
    return importlib.util.find_spec("circuitsvis") is not None


def show_tokens(tokens: Sequence[str], values: Sequence[float], start: int = 0):
    """A notebook view: circuitsvis's ``colored_tokens`` when installed, else plain HTML."""
    tokens, values = list(tokens)[start:], [float(v) for v in values][start:]
    if has_circuitsvis():
        from circuitsvis.tokens import colored_tokens

        return colored_tokens(tokens, values)
    return HTMLView(tokens_html(tokens, values))


class HTMLView:
    """HTML that Jupyter renders (``_repr_html_``), without depending on IPython."""

    def __init__(self, data: str) -> None:
        self.data = data

    def _repr_html_(self) -> str:
        return self.data


@dataclass
class TokenActivations:
    """Units' activations at every position of some rollouts.

    Attributes:
        components: the units (explicit indices; column j is ``components.indices[j]``).
        rows: the rollout rows shown (indices into the rollouts).
        activations: per shown rollout, [positions, units]: the activation h (for SAE latents,
            the latent's value).
        tokens: per shown rollout, the token text at each position (prompt then completion).
        prompt_lengths: per shown rollout, how many positions are the prompt.
        rewards: per shown rollout, its reward (NaN where the rollouts carry none).

    Example:
        >>> view = token_activations(policy, rollouts, sae_features(policy, 2, [17]), rows=[0])
        >>> view.show(0, 17)                                                    # doctest: +SKIP
    """

    components: ComponentSet
    rows: list[int]
    activations: list[Float[Tensor, "positions units"]]
    tokens: list[list[str]]
    prompt_lengths: list[int]
    rewards: list[float]

    #: what :meth:`values` and the views show when no quantity is named
    default_quantity = "activation"

    def _tables(self) -> dict[str, list[Tensor]]:
        return {"activation": self.activations}

    def values(self, row: int, unit: int, quantity: Quantity | None = None) -> list[float]:
        """One shown rollout's per-position values of one unit (hook index ``unit``)."""
        quantity = quantity or self.default_quantity
        tables = self._tables()
        if quantity not in tables:
            raise IpgkitError(f"quantity must be one of {sorted(tables)}, got {quantity!r}")
        if row not in self.rows:
            raise IpgkitError(f"rollout {row} is not shown; shown rows are {self.rows}")
        if unit not in self.components.indices:
            raise IpgkitError(
                f"unit {unit} is not shown; units are {list(self.components.indices)}"
            )
        column = list(self.components.indices).index(unit)
        return tables[quantity][self.rows.index(row)][:, column].tolist()

    def show(self, row: int, unit: int, quantity: Quantity | None = None, prompt: bool = False):
        """A coloured-token view of rollout ``row`` for ``unit`` in a notebook (circuitsvis when
        installed, plain HTML otherwise); the completion only unless ``prompt``."""
        slot = self.rows.index(row)
        start = 0 if prompt else self.prompt_lengths[slot]
        return show_tokens(self.tokens[slot], self.values(row, unit, quantity), start)

    def to_html(
        self,
        row: int,
        unit: int,
        quantity: Quantity | None = None,
        prompt: bool = False,
        scale: float | None = None,
    ) -> str:
        """The same view as self-contained HTML, for reports (``scale``: the value shown at full
        colour; the largest shown magnitude by default)."""
        slot = self.rows.index(row)
        start = 0 if prompt else self.prompt_lengths[slot]
        return tokens_html(self.tokens[slot], self.values(row, unit, quantity), scale, start)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (rollout, position, unit): rollout, position, token, part (``prompt`` or
        ``completion``), unit, then one column per quantity (contribution, activation) and the
        rollout's reward (and advantage)."""
        frames = []
        units = list(self.components.indices)
        tables = self._tables()
        for slot, row in enumerate(self.rows):
            positions = len(self.tokens[slot])
            frame = pd.DataFrame(
                {
                    "rollout": row,
                    "position": torch.arange(positions).repeat_interleave(len(units)).numpy(),
                    "unit": units * positions,
                }
            )
            frame["token"] = pd.Series(self.tokens[slot]).iloc[frame.position].to_numpy()
            frame["part"] = [
                "prompt" if p < self.prompt_lengths[slot] else "completion" for p in frame.position
            ]
            for name in sorted(tables, key=lambda n: n != "contribution"):
                frame[name] = tables[name][slot].reshape(-1).numpy()
            frames.append(frame.assign(**self._row_columns(slot)))
        frame = pd.concat(frames, ignore_index=True)
        first = ["rollout", "position", "token", "part", "unit"]
        return frame[[*first, *(c for c in frame.columns if c not in first)]]

    def _row_columns(self, slot: int) -> dict[str, float]:
        return {"reward": self.rewards[slot]}
