"""Family training options declared once, as dataclass fields that also describe their command-line flag.

Each family's ``TrainOptions`` dataclass (see :attr:`~..family.Family.TrainOptions`) makes its fields with
:func:`option`; the command line builds its ``train`` flags from :func:`declared_options` of every
registered family, so a new option needs no CLI code. A field's name is its flag's argparse ``dest``
(``--head-channels`` -> ``head_channels``). Fields made with plain ``dataclasses.field`` (or a bare default)
are options of the Python API only.

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass
... class ToyOptions:
...     layers: int = option(8, "--layers", "N output layers", type=int, range=(1, 64))
>>> [(name, meta["flag"]) for name, meta in declared_options(ToyOptions)]
[('layers', '--layers')]
"""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any, flag: str, help: str, *, type: type | None = None, range: tuple | None = None,
           low_open: bool = False, choices: tuple | None = None, metavar: str | None = None,
           architecture: bool = False) -> Any:
    """A dataclass field that declares its command-line flag.

    Parameters
    ----------
    default : object
        The field's default (also the flag's). ``False`` with ``type=bool``: a switch (``store_true``).
    flag : str
        e.g. ``"--head-channels"``; the field's name must be its argparse ``dest`` (``head_channels``).
    help : str
        The flag's help text.
    type : type, optional
        ``int``, ``float``, ``str`` (default) or ``bool``.
    range : (low, high), optional
        Inclusive bounds of an int or float (``high`` None: no upper bound for an int).
    low_open : bool
        The float range excludes ``low``.
    choices : tuple of str, optional
    metavar : str, optional
    architecture : bool
        The value belongs to the architecture (:meth:`~..family.Family.architecture`), not to training.
    """
    meta = {"flag": flag, "help": help, "type": type or str, "range": range, "low_open": low_open,
            "choices": choices, "metavar": metavar, "architecture": architecture}
    return dataclasses.field(default=default, metadata=meta)


def declared_options(options_class: type) -> list[tuple[str, dict]]:
    """``(field name, declaration)`` of every field of ``options_class`` made with :func:`option`."""
    return [(f.name, {**f.metadata, "default": f.default}) for f in dataclasses.fields(options_class)
            if "flag" in f.metadata]


def options_from(options_class: type, values: Any):
    """An ``options_class`` whose declared fields take the same-named attributes of ``values`` (e.g. parsed
    arguments); its other fields keep their defaults."""
    return options_class(**{name: getattr(values, name) for name, _ in declared_options(options_class)
                            if hasattr(values, name)})


def training_fields(options: Any) -> dict:
    """The fields of a ``TrainOptions`` instance that are not architecture, as a JSON-able dict (field order)."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
            if not f.metadata.get("architecture")}


def comma_ints(text: str | None) -> list[int] | None:
    """``"4,8,16"`` -> ``[4, 8, 16]`` (None stays None)."""
    return None if text is None else [int(v) for v in text.split(",")]
