"""The output folder of a batch: which files a run will write, what it may replace, its lock and its recipe.

Rules (checked before any work):

* an output never replaces an input (not even with ``overwrite``);
* a file in the folder that this package did not write (no sidecar lists it) is replaced only with ``overwrite``;
* one run at a time writes into a folder (:func:`folder_lock`);
* ``recipe.json`` describes every label file beside it: a run with another recipe, into a folder that keeps
  labels of the old one, writes ``recipe-<key>.json`` instead, and each sidecar names its recipe file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import InstanceTunerError
from ..io.safe_write import ExportError, OverwriteError, check_creatable

SIDECAR = ".tuner.json"
RECIPE = "recipe.json"
LOCK = ".napari-instance-tuner.lock"


def output_stem(path: Path) -> str:
    """The stem of an input's outputs (``slide.ome.tif`` -> ``slide``)."""
    name = path.name
    return name[: -len(".ome.tif")] if name.lower().endswith(".ome.tif") else path.stem


def output_names(stem: str, keep_masks: bool) -> list[str]:
    """Every file or folder a run may write for one input, sidecar last."""
    names = [f"{stem}.tif", f"{stem}.zarr"]
    if keep_masks:
        names += [f"{stem}_instances.npz", f"{stem}_objects.npz"]
    return names + [f"{stem}{SIDECAR}"]


def read_sidecar(path: Path) -> dict | None:
    """A sidecar's content, or None if it is missing or not one of ours."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "recipe_sha256" in info else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def check_output_folder(out_dir: Path, inputs: list[Path], keep_masks: bool, overwrite: bool) -> None:
    """Refuse a run that would replace an input or, without ``overwrite``, a file this package did not write.

    Raises
    ------
    ExportError
        If ``out_dir`` is a file or cannot be created or written to, or an output would replace an input.
    OverwriteError
        If an output exists and is not an earlier output of this package, and ``overwrite`` is False.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {str(out_dir)!r} is a file; give a folder for the outputs")
    check_creatable(out_dir / RECIPE, f"into {str(out_dir)!r}")
    if not out_dir.is_dir():
        return
    recipe = out_dir / RECIPE
    if recipe.exists() and not overwrite and not _is_recipe(recipe):
        raise OverwriteError(f"{str(recipe)!r} exists and is not a recipe of this package; "
                             "pass --overwrite to replace it, or choose another --out")
    for path in inputs:
        stem = output_stem(path)
        info = read_sidecar(out_dir / f"{stem}{SIDECAR}")
        ours = set(info.get("outputs", [])) if info else set()
        for name in output_names(stem, keep_masks):
            target = out_dir / name
            if not os.path.lexists(target):
                continue
            clash = next((p for p in inputs if _same_file(p, target)), None)
            if clash is not None:
                raise ExportError(f"the output {str(target)!r} would replace the input {str(clash)!r}; "
                                  "choose another --out folder")
            if overwrite or name in ours or (info is not None and name.endswith(SIDECAR)):
                continue
            raise OverwriteError(f"{str(target)!r} exists and was not written by an earlier run; "
                                 "pass --overwrite to replace it, or choose another --out")


def _is_recipe(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == "napari-instance-tuner-recipe"
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def folder_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir``'s lock for a run; another run into the same folder is refused while it is held.

    Raises
    ------
    InstanceTunerError
        If another process holds the lock.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(out_dir / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InstanceTunerError(f"another run is writing into {str(out_dir)!r}; wait for it to finish, "
                                 "or choose another --out") from None
    except OSError as exc:
        raise ExportError(f"cannot write into {str(out_dir)!r}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        lock.release()


def recipe_name(out_dir: Path, key: str, redone: set[str], key_of) -> str:
    """The recipe file of a run with recipe ``key``: ``recipe.json``, unless it describes labels that stay.

    Parameters
    ----------
    out_dir : Path
    key : str
        The run's recipe key.
    redone : set of str
        Stems this run writes (their old outputs are replaced).
    key_of : callable
        ``key_of(recipe_dict) -> str``, the recipe key function.
    """
    try:
        old = json.loads((out_dir / RECIPE).read_text(encoding="utf-8"))
        old_key = key_of(old)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return RECIPE
    if old_key == key:
        return RECIPE
    for side in out_dir.glob(f"*{SIDECAR}"):
        info = read_sidecar(side)
        stem = side.name[: -len(SIDECAR)]
        if info and stem not in redone and info.get("recipe_sha256") == old_key and info.get("recipe", RECIPE) == RECIPE:
            return f"recipe-{key[:12]}.json"
    return RECIPE
