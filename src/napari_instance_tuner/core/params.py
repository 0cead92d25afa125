"""Parameter dataclasses with defaults, ranges and descriptions.

A family's post-processing parameters are a frozen dataclass whose fields are declared with
:func:`param`. The widget builds its sliders from :func:`param_specs`; the CLI and recipes use
:func:`params_from_dict` / :func:`params_to_dict`. A new parameter therefore needs no widget code.

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class P:
...     threshold: float = param(0.5, 0.0, 1.0, "probability above which a pixel is foreground")
>>> [s.name for s in param_specs(P)]
['threshold']
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import ParamsError

P = TypeVar("P")


@dataclass(frozen=True)
class ParamSpec:
    """What a widget needs to show one parameter.

    Attributes
    ----------
    name : str
    default : float | int | bool
    low, high : float | int | bool
        Inclusive range (for ``bool`` parameters: False, True).
    description : str
        One line, shown as the tooltip.
    step : float | int
        Slider step.
    kind : type
        ``float``, ``int`` or ``bool``.
    """

    name: str
    default: Any
    low: Any
    high: Any
    description: str
    step: Any
    kind: type


def param(default: Any, low: Any = None, high: Any = None, description: str = "", step: Any = None):
    """Declare a dataclass field carrying its range and description.

    Parameters
    ----------
    default : float | int | bool
        Default value; its type fixes the parameter's kind.
    low, high : same type as ``default``
        Inclusive range (ignored for ``bool``).
    description : str
        One-line explanation for tooltips and ``--help``.
    step : same type as ``default``, optional
        Slider step; defaults to 1 for ints and (high - low) / 100 for floats.
    """
    kind = type(default)
    if kind is bool:
        low, high, step = False, True, 1
    elif step is None:
        step = 1 if kind is int else (high - low) / 100
    return dataclasses.field(
        default=default,
        metadata={"low": low, "high": high, "description": description, "step": step, "kind": kind},
    )


def param_specs(cls_or_obj: Any) -> list[ParamSpec]:
    """Return the :class:`ParamSpec` of every field of a parameter dataclass, in declaration order."""
    specs = []
    for f in dataclasses.fields(cls_or_obj):
        m = f.metadata
        specs.append(ParamSpec(f.name, f.default, m["low"], m["high"], m["description"], m["step"], m["kind"]))
    return specs


def searched_names(params: Any, exclude: list[str], among: list[str] | None = None) -> list[str] | None:
    """The parameters an auto-tuning searches when ``exclude`` is left out: ``among`` (None: every parameter
    of ``params``) less ``exclude``; ``among`` unchanged when nothing is excluded.

    Raises
    ------
    ParamsError
        If ``exclude`` names a parameter ``params`` does not have.

    Examples
    --------
    >>> @dataclass(frozen=True)
    ... class P:
    ...     a: float = param(0.5, 0.0, 1.0)
    ...     b: int = param(1, 0, 5)
    >>> searched_names(P(), ["b"])
    ['a']
    """
    known = [spec.name for spec in param_specs(params)]
    if unknown := sorted(set(exclude) - set(known)):
        raise ParamsError(f"no parameter {', '.join(unknown)} in {', '.join(known)}")
    return [n for n in (among or known) if n not in exclude] if exclude else among


def params_to_dict(params: Any) -> dict[str, Any]:
    """Parameters as a plain JSON-able dict."""
    return dataclasses.asdict(params)


def params_from_dict(cls: type[P], values: dict[str, Any] | None, base: P | None = None) -> P:
    """Build validated parameters from a dict, starting from ``base`` (or the defaults).

    Raises
    ------
    ParamsError
        For an unknown name, a value of the wrong type, NaN, or a value outside the declared range.
    """
    current = params_to_dict(base) if base is not None else {}
    specs = {s.name: s for s in param_specs(cls)}
    for name, value in (values or {}).items():
        if name not in specs:
            raise ParamsError(f"unknown parameter {name!r} for {cls.__name__}; valid: {', '.join(specs)}")
        current[name] = _coerce(specs[name], value)
    return cls(**current)


def _coerce(spec: ParamSpec, value: Any) -> Any:
    if spec.kind is bool:
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise ParamsError(f"parameter {spec.name!r} must be true or false, got {value!r}")
        return bool(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParamsError(f"parameter {spec.name!r} must be a number, got {value!r}") from None
    if math.isnan(number):
        raise ParamsError(f"parameter {spec.name!r} is NaN")
    if math.isinf(number):
        raise ParamsError(f"parameter {spec.name!r} must be a finite number, got {value!r}")
    if spec.kind is int:
        if number != int(number):
            raise ParamsError(f"parameter {spec.name!r} must be a whole number, got {value!r}")
        number = int(number)
    if not spec.low <= number <= spec.high:
        raise ParamsError(f"parameter {spec.name!r}={value!r} is outside its range [{spec.low}, {spec.high}]")
    return number


def read_params_file(path: str | os.PathLike) -> dict[str, Any]:
    """The parameter dict of a JSON file: a plain ``{"name": value}`` object or a recipe (its ``"postprocess"``).

    Raises
    ------
    ParamsError
        For a missing or unreadable file, a folder, text that is not JSON (``Infinity`` and ``NaN`` included)
        or JSON that is not an object. The message names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise ParamsError(f"parameter file {str(path)!r} is a folder; give a JSON file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"parameter file {str(path)!r} does not exist") from None
    except UnicodeDecodeError:
        raise ParamsError(f"parameter file {str(path)!r} is not text (expected JSON)") from None
    except OSError as exc:
        raise ParamsError(f"cannot read parameter file {str(path)!r}: {exc.strerror or exc}") from None
    if not text.strip():
        raise ParamsError(f"parameter file {str(path)!r} is empty (expected a JSON object)")
    try:
        values = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise ParamsError(f"parameter file {str(path)!r} is not valid JSON: {exc}") from None
    if isinstance(values, dict) and "postprocess" in values:  # a recipe or a checkpoint card
        values = values["postprocess"]
    if not isinstance(values, dict):
        raise ParamsError(f"parameter file {str(path)!r} holds a JSON {type(values).__name__}, "
                          "not an object of parameter names and values")
    return values


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")
