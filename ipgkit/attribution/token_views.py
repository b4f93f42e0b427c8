"""Coloured-token views of one rollout: per-token attribution or activation of one unit, as
circuitsvis renders them in notebooks, or as self-contained HTML when circuitsvis is missing
(the HTML report uses the plain form, which needs no network at view time)."""

from __future__ import annotations

import html
import importlib.util
from collections.abc import Sequence
from typing import Literal

Quantity = Literal["contribution", "activation"]


def colour(value: float, scale: float) -> str:
    """Red for positive, blue for negative, white at zero; ``scale`` maps to full colour."""
    strength = 0.0 if scale <= 0 else max(-1.0, min(1.0, value / scale))
    fade = int(255 * (1 - abs(strength)))
    return f"rgb(255,{fade},{fade})" if strength >= 0 else f"rgb({fade},{fade},255)"


def tokens_html(
    tokens: Sequence[str], values: Sequence[float], scale: float | None = None, start: int = 0
) -> str:
    """``<span>`` per token coloured by its value (title: position and value), from ``start``."""
    values = [float(v) for v in values]
    scale = scale if scale is not None else max((abs(v) for v in values[start:]), default=0.0)
    spans = []
    for position in range(start, len(tokens)):
        text = html.escape(tokens[position]).replace("\n", "\u21b5<br>")
        value = values[position]
        spans.append(
            f'<span title="position {position}: {value:+.4g}" style="background:'
            f'{colour(value, scale)};font-family:monospace;white-space:pre">{text}</span>'
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
