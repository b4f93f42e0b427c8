"""Command-line flags generated from config dataclasses, so no CLI default can drift from its
config: one ``--field-name`` per field, typed by its annotation, with the default the dataclass
declares and the help text its docstring's ``Attributes:`` section gives.

Nested configs (``GRPOConfig`` inside ``InTExperimentConfig``) get prefixed flags
(``--grpo-max-steps``). With ``keep_base=True`` every flag defaults to None, meaning "the base
config's value", for commands whose base config is chosen at run time (``--small``).

Example:
    >>> parser = argparse.ArgumentParser()
    >>> add_config_flags(parser, GRPOConfig)                                # doctest: +SKIP
    >>> args = parser.parse_args(["--beta", "0.1"])                         # doctest: +SKIP
    >>> config = config_from_args(GRPOConfig, args)                          # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal, Union

from ipgkit.errors import IpgkitError


def field_help(cls) -> dict[str, str]:
    """Each field's description from ``cls``'s docstring (``Attributes:`` section, Google style)."""
    doc = inspect.getdoc(cls) or ""
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    found: dict[str, list[str]] = {}
    names: list[str] = []
    for line in section.splitlines():
        entry = re.match(r"^    ([\w, ]+):\s*(.*)$", line)
        if entry:
            names = [name.strip() for name in entry.group(1).split(",")]
            for name in names:
                found[name] = [entry.group(2)]
        elif line.startswith("        ") and names:
            for name in names:
                found[name].append(line.strip())
        elif line.strip() and not line.startswith(" "):
            break
    return {name: " ".join(parts).replace("``", "") for name, parts in found.items()}


def _flag(prefix: str, name: str) -> str:
    return "--" + f"{prefix}{name}".replace("_", "-")


def _dest(prefix: str, name: str) -> str:
    return f"{prefix}{name}".replace("-", "_")


def _strip_optional(hint) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); a union with non-literal members keeps its literal part
    (``Literal["zero", "mean"] | Tensor`` -> the literal: a tensor cannot be typed in)."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional = len(members) < len(typing.get_args(hint))
        literals = [m for m in members if typing.get_origin(m) is Literal]
        if len(members) > 1 and literals:
            return literals[0], optional
        if len(members) == 1:
            return members[0], optional
    return hint, False


def _converter(hint) -> tuple[Callable[[str], Any], str]:
    """How to read one command-line word as ``hint`` (a scalar, or a pair written ``a:b``)."""
    if hint in (int, float, str):
        return hint, hint.__name__
    if typing.get_origin(hint) is tuple:
        parts = [_converter(arg)[0] for arg in typing.get_args(hint)]

        def pair(text: str):
            pieces = text.split(":")
            if len(pieces) != len(parts):
                raise argparse.ArgumentTypeError(
                    f"expected {len(parts)} values joined by ':', got {text!r}"
                )
            return tuple(convert(piece) for convert, piece in zip(parts, pieces, strict=True))

        return pair, ":".join(getattr(arg, "__name__", "value") for arg in typing.get_args(hint))
    raise IpgkitError(f"no command-line form for a field of type {hint!r}")


def _argument(hint, default, keep_base: bool) -> dict:
    """``add_argument`` keywords for one field."""
    hint, optional = _strip_optional(hint)
    origin = typing.get_origin(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction, "default": None if keep_base else default}
    if origin is Literal:
        choices = list(typing.get_args(hint))
        kind = type(choices[0])
        return {"type": kind, "choices": choices, "default": default}
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) != 2 or args[1] is not Ellipsis:  # fixed length: one word, ``a:b``
            convert, metavar = _converter(hint)
            return {"type": convert, "metavar": metavar.upper(), "default": default}
        convert, metavar = _converter(args[0])
        return {"type": convert, "nargs": "+", "metavar": metavar.upper(), "default": default}
    convert, _ = _converter(hint)
    del optional
    return {"type": convert, "default": default}


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls,
    prefix: str = "",
    exclude: Iterable[str] = (),
    aliases: dict[str, list[str]] | None = None,
    defaults: dict[str, Any] | None = None,
    keep_base: bool = False,
    default_text: dict[str, str] | None = None,
) -> None:
    """Add one flag per field of dataclass ``cls`` (recursing into nested dataclass fields).

    Args:
        exclude: fields the command sets itself.
        aliases: extra option strings per field (kept when a flag was renamed).
        defaults: command-level defaults that replace the dataclass's (say why in a comment).
        keep_base: every flag defaults to None ("keep the base config's value").
        default_text: how the help shows a default that is decided later (``"the task's"``).
    """
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    group = parser.add_argument_group(f"{cls.__name__}" + (f" ({prefix[:-1]})" if prefix else ""))
    aliases, defaults, exclude = aliases or {}, defaults or {}, set(exclude)
    default_text = default_text or {}
    for item in dataclasses.fields(cls):
        if item.name in exclude or not item.init:
            continue
        default = item.default
        if default is dataclasses.MISSING:
            default = item.default_factory()
        if dataclasses.is_dataclass(default):
            add_config_flags(parser, type(default), f"{prefix}{item.name}-", keep_base=keep_base)
            continue
        shown = defaults.get(item.name, default)
        keywords = _argument(hints[item.name], None if keep_base else shown, keep_base)
        text = helps.get(item.name, "").replace("%", "%%")
        if keep_base:
            text += " (default: the base configuration's)"
        elif not isinstance(shown, bool):
            text += f" (default: {default_text.get(item.name, _shown(shown))})"
        flags = [_flag(prefix, item.name), *aliases.get(item.name, [])]
        group.add_argument(*flags, dest=_dest(prefix, item.name), help=text.strip(), **keywords)


def _shown(value) -> str:
    if isinstance(value, tuple):
        return " ".join(":".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in value)
    return str(value).replace("%", "%%")


def config_from_args(cls, args: argparse.Namespace, base=None, prefix: str = "", **fixed):
    """The ``cls`` instance the flags describe: ``base`` (or the defaults) with every flag that was
    given (or, without ``keep_base``, every flag) applied, then ``fixed``."""
    base = base if base is not None else cls()
    changes = {}
    for item in dataclasses.fields(cls):
        if item.name in fixed or not item.init:
            continue
        current = getattr(base, item.name)
        if dataclasses.is_dataclass(current):
            nested = config_from_args(type(current), args, current, f"{prefix}{item.name}_")
            if nested != current:
                changes[item.name] = nested
            continue
        dest = _dest(prefix, item.name)
        if not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if value is None and current is not None:
            continue
        changes[item.name] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(base, **changes, **fixed)
