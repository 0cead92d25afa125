"""The inputs of a batch: image files named by files, folders and glob patterns, and their signatures."""

from __future__ import annotations

import glob
from pathlib import Path

from ..errors import InstanceTunerError
from ..training.data import IMAGE_SUFFIXES
from .batch_folder import output_stem

_EXTRA_SUFFIXES = (".svs", ".ndpi", ".scn", ".btf")


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Image files named by ``patterns``: files, folders (their images, not recursive) or glob patterns
    (``**`` recursive), in order, without duplicates.

    Raises
    ------
    InstanceTunerError
        If a pattern matches nothing, or two inputs share a file stem (their outputs would collide).
    """
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if _is_image(p))
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if _is_image(Path(p)))
        if not matches:
            raise InstanceTunerError(f"no images found for {pattern!r}")
        found.extend(m for m in matches if m not in found)
    stems: dict[str, Path] = {}
    for p in found:
        stem = output_stem(p)
        if stem in stems:
            raise InstanceTunerError(f"{stems[stem]} and {p} would write the same outputs ({stem}.*); "
                                     "segment them into different --out folders")
        stems[stem] = p
    return found


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES + _EXTRA_SUFFIXES


def input_signature(path: Path) -> dict:
    """Size and modification time of an input (a changed image is segmented again)."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
