"""Safe file writes: a temporary file beside the target, renamed into place; no silent overwrites.

A failure never leaves a partial file, and an existing file is replaced only with ``overwrite=True``.
Problems become :class:`ExportError` messages that name the file and the reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import InstanceTunerError


class ExportError(InstanceTunerError):
    """A file cannot be written (missing folder, no permission, a directory in the way...)."""


class OverwriteError(ExportError):
    """A target file exists and overwriting was not allowed."""


def check_target(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check that ``path`` can be written; returns it as a Path.

    Raises
    ------
    OverwriteError
        If the file exists and ``overwrite`` is False.
    ExportError
        If the folder does not exist or is not writable, or ``path`` is a directory.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise ExportError(f"cannot write {path.name!r}: the folder {str(folder)!r} does not exist")
    if path.is_dir():
        raise ExportError(f"cannot write {str(path)!r}: it is a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {path.name!r}: no permission to write in {str(folder)!r}")
    if path.exists() and not overwrite:
        raise OverwriteError(f"{str(path)!r} exists; choose another name or allow overwriting")
    return path


def check_creatable(path: str | os.PathLike, what: str) -> Path:
    """Check that ``path`` (a file or folder, which may not exist yet) can be made: its nearest existing
    ancestor is a folder this process may write in. ``what`` names it in messages; returns that ancestor.

    Raises
    ------
    ExportError
        If a file is in the way or the folder is not writable.
    """
    folder = Path(path).parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ExportError(f"cannot write {what}: {str(folder)!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {what}: no permission to write in {str(folder)!r}")
    return folder


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], overwrite: bool = False) -> Path:
    """Write a file through ``write(fh)`` into a temporary file beside ``path``, then rename it into place.

    The temporary file is removed whatever goes wrong, so the target is either the complete new file or
    untouched. Without ``overwrite``, the rename is a hard link that fails if the target appeared meanwhile.

    Raises
    ------
    OverwriteError, ExportError
        As for :func:`check_target`; ``ExportError`` also for OS errors while writing (disk full...).
    """
    path = check_target(path, overwrite)
    try:
        replace_atomic(path, write, overwrite)
    except OSError as exc:
        raise ExportError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


def replace_atomic(path: Path, write: Callable[[IO[bytes]], Any], overwrite: bool) -> None:
    """The mechanism of :func:`write_atomic` without its checks: OS errors (a full disk...) propagate as they are.

    ``write(fh)`` fills a new temporary file beside ``path`` (created with the umask's permissions, 0644 under
    022), which is then renamed into place (``overwrite``) or hard-linked (never replacing a file); the
    temporary file is removed whatever happens.

    Raises
    ------
    OverwriteError
        Without ``overwrite``, if ``path`` exists.
    OSError
        As raised by ``write`` or the file system.
    """
    tmp = temp_name(path)
    try:
        with open(tmp, "xb") as fh:  # "x": created by this call
            write(fh)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and never replaces a file
            except FileExistsError:
                raise OverwriteError(f"{str(path)!r} exists; choose another name or allow overwriting") from None
            except OSError:  # a file system without hard links
                if path.exists():
                    raise OverwriteError(f"{str(path)!r} exists; choose another name or allow overwriting") from None
                os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write UTF-8 text safely (see :func:`write_atomic`)."""
    return write_atomic(path, lambda fh: fh.write(text.encode("utf-8")), overwrite)


#: Names of the temporary files and folders made here: ``.<name>.<8 hex digits>.tmp``.
TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def temp_name(path: Path) -> Path:
    """A fresh hidden temporary name beside ``path`` (matches :data:`TEMP_NAME`)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; renamed to ``path`` when the ``with`` block succeeds.

    Readers never see a partial folder at ``path``: a failure (or a kill) leaves at most a hidden temporary
    folder, removed on failure. An existing ``path`` is replaced only with ``overwrite``.

    Raises
    ------
    OverwriteError, ExportError
        As for :func:`check_target`, and for OS errors while renaming.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path.name!r}: the folder {str(path.parent)!r} does not exist")
    if path.exists() and not overwrite:
        raise OverwriteError(f"{str(path)!r} exists; choose another name or allow overwriting")
    tmp = temp_name(path)
    try:
        yield tmp
        old = temp_name(path) if path.exists() else None
        if old is not None:
            os.replace(path, old)  # moved aside first: a folder cannot be renamed onto a non-empty one
        os.replace(tmp, path)
        if old is not None:
            _remove(old)
    except OSError as exc:
        raise ExportError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Remove the temporary files and folders a killed run left in ``folder``; returns their names.

    Call it only while no other run writes there (e.g. holding the folder's lock).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if TEMP_NAME.match(p.name)]
    for p in stale:
        _remove(p)
    return [p.name for p in stale]
