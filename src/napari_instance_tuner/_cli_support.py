"""What every subcommand of the command line shares: option value types with ranges, output-file checks made
before any work, a progress bar, and the one-line error a failure ends in."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

from .core.errors import InstanceTunerError
from .core.io.safe_write import ExportError, OverwriteError, check_creatable


def int_range(low: int, high: int | None = None):
    """An argparse ``type``: a whole number in [low, high] (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be a whole number {bound}, got {value}")
        return value

    return parse


def float_range(low: float, high: float, *, low_open: bool = False):
    """An argparse ``type``: a finite number in [low, high] (``(low, high]`` with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval}, got {text}")
        return value

    return parse


def check_out_file(path: str | os.PathLike, overwrite: bool, option: str = "--out",
                   inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Check, before any work, that the output file ``path`` may be written; returns it as a Path.

    Its folder may be missing (it is created) but must be creatable. ``inputs`` (files the command reads)
    are never replaced, not even with ``overwrite``.

    Raises
    ------
    ExportError
        A folder at ``path``, a file in the way of its folder, no permission, or ``path`` is an input.
    OverwriteError
        ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{option} {str(path)!r} is a folder; give a file name")
    for source in inputs:
        if source is not None and Path(source).exists() and path.exists() and os.path.samefile(source, path):
            raise ExportError(f"{option} {str(path)!r} is an input of this command; choose another name")
    if path.exists() and not overwrite:
        raise OverwriteError(f"{option} {str(path)!r} exists; pass --overwrite to replace it, or choose another name")
    check_creatable(path, f"{option} {str(path)!r}")
    return path


def run_with_bar(work: Generator[Any, None, Any], quiet: bool, unit: str = "step", desc: str | None = None) -> Any:
    """Drive a progress generator (see :mod:`.core.progress`) with a tqdm bar on stderr; returns its result.

    The bar follows each record's ``done``/``total`` (a new stage with another total restarts it) and shows
    its message; ``quiet`` hides it.
    """
    from tqdm import tqdm  # deferred: tqdm, only while a command runs

    with tqdm(total=0, unit=unit, desc=desc, disable=quiet, file=sys.stderr, dynamic_ncols=True,
              mininterval=0.5) as bar:
        while True:
            try:
                p = next(work)
            except StopIteration as stop:
                return stop.value
            if p.total and p.total != bar.total:
                bar.reset(total=p.total)
            bar.n = min(p.done, p.total) if p.total else p.done
            if p.message:
                bar.set_postfix_str(p.message[:60], refresh=False)
            bar.refresh()


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C so that temporary files are removed."""


def raise_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` in the main thread (``finally`` blocks then clean up)."""

    def handler(signum, frame):
        raise Terminated()

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. main() called from a worker thread)
        pass


def error_line(exc: BaseException) -> tuple[str, int]:
    """The one line (without ``error: ``) and the exit code a failure ends the command with.

    Errors the user can fix (bad values, files, weights: :class:`InstanceTunerError`) exit with 2; other
    failures (an OS error, out of memory, a bug) with 1 and a hint to re-run with ``--debug``.
    """
    if isinstance(exc, InstanceTunerError):
        lines = str(exc).strip().splitlines()
        return (lines[0] if lines else type(exc).__name__), 2
    if isinstance(exc, MemoryError):
        return "out of memory; use a smaller --tile or --network-tile, or a machine with more memory", 1
    if isinstance(exc, OSError):
        where = f" {exc.filename!r}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}", 1
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text} (an unexpected failure; re-run with --debug for the details)", 1


__all__ = ["ExportError", "OverwriteError", "Terminated", "check_out_file", "error_line", "float_range",
           "int_range", "raise_on_sigterm", "run_with_bar"]
