"""Recipes: a JSON record of how labels were made, enough to make them again without the GUI.

A recipe names the weights (file name, path, SHA-256), the family and its post-processing parameters,
tiling, device, normalisation, the source image's name and shape, and the package and library versions.
:func:`replay` loads the same weights (refusing a file whose hash differs) and runs the same
predict -> post-process on an image; on the CPU the labels are identical pixel for pixel.

Example recipe (abridged)::

    {"format": "napari-instance-tuner-recipe", "format_version": 1,
     "weights": {"name": "glas", "file": "glas.safetensors", "path": "/…/glas.safetensors", "sha256": "9f…"},
     "family": "three-branch", "postprocess": {"threshold": 0.5, …},
     "tiling": {"tile_size": 512, "tile_overlap": 64}, "device": "cpu",
     "normalisation": {"kind": "percentile", "low": 1.0, "high": 99.8}, "pixel_scale": 0.5,
     "image": {"name": "slide 1", "shape": [522, 775, 3]}, "versions": {"numpy": "2.2.6", …}}

The key ``"postprocess"`` is the one ``--params`` files use, so a recipe also works as a parameter file.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ..errors import InstanceTunerError, WeightsError
from ..family import Instances
from ..inference.predict import choose_device
from ..params import params_from_dict, params_to_dict
from ..progress import run
from ..registry import get_family
from .checkpoint import (
    LoadedModel,
    model_sha256,
    read_metadata,
    resolve_model_path,
    shipped_models,
    with_card_settings,
)
from .safe_write import write_text

FORMAT = "napari-instance-tuner-recipe"
FORMAT_VERSION = 1
_REQUIRED = ("weights", "family", "postprocess", "image")
_LIBRARIES = {"numpy": ("numpy",), "scipy": ("scipy",), "torch": ("torch",), "scikit-image": ("scikit-image",),
              "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python")}


class RecipeError(InstanceTunerError):
    """A recipe file is unreadable, incomplete, of a newer format, or names weights that cannot be found."""


def library_versions() -> dict[str, str]:
    """Versions of Python, this package and the libraries that shape the result (None if not installed)."""
    versions = {"napari_instance_tuner": __version__, "python": platform.python_version()}
    for name, dists in _LIBRARIES.items():
        versions[name] = None
        for dist in dists:
            try:
                versions[name] = _metadata.version(dist)
                break
            except _metadata.PackageNotFoundError:
                continue
    return versions


def build_recipe(
    *,
    weights_path: str | os.PathLike,
    weights_sha256: str,
    family: str,
    params: dict,
    image_name: str,
    image_shape: tuple[int, ...],
    device: str = "cpu",
    tile_size: int | None = None,
    meta: dict | None = None,
    streaming: dict | None = None,
) -> dict:
    """Assemble a recipe from plain values (what a Labels layer's metadata holds); no model is loaded.

    ``meta`` is the checkpoint metadata; when omitted it is read from the file's header (JSON only).
    ``streaming`` (``tile``, ``halo``, ``amp``: :meth:`..inference.streaming.StreamSettings.to_dict`) records how a large
    image was cut into tiles; it becomes the recipe's ``"streaming"`` key, as ``predict`` writes it.
    """
    path = Path(weights_path)
    if meta is None:
        meta = checkpoint_meta(path)
    shipped = shipped_models().get(path.stem)
    recipe = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "weights": {
            "name": meta.get("name") or path.stem,
            "file": path.name,
            "path": str(path.resolve()) if path.exists() else str(path),
            "sha256": weights_sha256,
            "shipped": shipped is not None and shipped.resolve() == path.resolve(),
        },
        "family": family,
        "postprocess": dict(params),
        # The effective tiling (predict_maps' defaults); None where the checkpoint could not be read.
        "tiling": {"tile_size": int(tile_size) if tile_size else (int(meta.get("tile_size", 512)) if meta else None),
                   "tile_overlap": int(meta.get("tile_overlap", 64)) if meta else None},
        "device": device,
        "normalisation": meta.get("normalisation"),
        "pixel_scale": meta.get("pixel_scale", 1.0),
        "pixel_size_um": meta.get("pixel_size_um"),
        "in_channels": meta.get("in_channels"),
        "image": {"name": str(image_name), "shape": [int(n) for n in image_shape]},
        "versions": library_versions(),
    }
    if streaming:
        recipe["streaming"] = dict(streaming)
    if meta.get("trained_test_time"):  # a shipped card's inference limits (see checkpoint.with_card_settings)
        recipe["test_time"] = {key: meta["architecture"][key] for key in meta["trained_test_time"]}
    return recipe


#: Keys a Labels layer's ``metadata["napari_instance_tuner"]`` holds when the Segment widget made it.
LAYER_KEYS = ("weights_path", "weights_sha256", "family", "params", "device", "tile_size", "image_name", "image_shape")


def recipe_from_metadata(info: dict) -> dict | None:
    """The recipe of a Labels layer from its ``metadata["napari_instance_tuner"]`` dict, or None without one.

    ``info`` holds :data:`LAYER_KEYS` (``tile_size`` may be None: the model's default), and for labels of a
    streamed run ``"streaming"`` (tile, halo, amp), which the recipe keeps. If the weights file can no longer be
    read, the recipe is still made (its SHA-256 identifies the weights) without the normalisation details.
    """
    if not isinstance(info, dict) or any(key not in info for key in LAYER_KEYS if key != "tile_size"):
        return None
    try:
        meta = checkpoint_meta(info["weights_path"])
    except WeightsError:
        meta = {}
    return build_recipe(
        weights_path=info["weights_path"], weights_sha256=info["weights_sha256"], family=info["family"],
        params=info["params"], image_name=info["image_name"], image_shape=tuple(info["image_shape"]),
        device=info["device"], tile_size=info.get("tile_size"), meta=meta,
        streaming=info["streaming"] if isinstance(info.get("streaming"), dict) else None,
    )


def make_recipe(
    loaded: LoadedModel,
    params: Any,
    image_name: str,
    image_shape: tuple[int, ...],
    device: str = "cpu",
    tile_size: int | None = None,
) -> dict:
    """The recipe of labels made by ``loaded`` with post-processing ``params`` (a parameter dataclass)."""
    return build_recipe(
        weights_path=loaded.path, weights_sha256=loaded.sha256, family=loaded.family.name,
        params=params_to_dict(params), image_name=image_name, image_shape=image_shape, device=device,
        tile_size=tile_size, meta=loaded.meta,
    )


def checkpoint_meta(path: str | os.PathLike) -> dict:
    """The JSON metadata of a checkpoint, read from the safetensors header alone (no tensors, no torch), with
    what a shipped model's card adds (:func:`~.checkpoint.with_card_settings`)."""
    return with_card_settings(read_metadata(path), path)


def recipe_text(recipe: dict) -> str:
    """A recipe as indented JSON text, without the private keys ``load_recipe`` adds."""
    return json.dumps({k: v for k, v in recipe.items() if not k.startswith("_")}, indent=1) + "\n"


def save_recipe(path: str | os.PathLike, recipe: dict, overwrite: bool = False) -> Path:
    """Write a recipe as indented JSON, atomically; refuses to replace a file unless ``overwrite``."""
    validate_recipe(recipe, str(path))
    return write_text(path, recipe_text(recipe), overwrite)


def load_recipe(path: str | os.PathLike) -> dict:
    """Read and validate a recipe file.

    The returned dict has an extra key ``"_recipe_dir"``: the folder in which :func:`resolve_weights` also
    looks for the weights file.

    Raises
    ------
    RecipeError
        For a missing or unreadable file, invalid JSON, a missing key, another format or a newer version,
        an unknown family or out-of-range parameters.
    """
    path = Path(path)
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path.name!r}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise RecipeError(f"recipe {path.name!r} is not valid JSON: {exc}") from None
    validate_recipe(recipe, path.name)
    return {**recipe, "_recipe_dir": str(path.resolve().parent)}


def validate_recipe(recipe: Any, source: str = "recipe") -> None:
    """Raise :class:`RecipeError` naming ``source`` if ``recipe`` is not a usable recipe."""
    if not isinstance(recipe, dict) or recipe.get("format") != FORMAT:
        raise RecipeError(f"{source!r} is not a napari-instance-tuner recipe (no \"format\": \"{FORMAT}\")")
    version = recipe.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise RecipeError(f"{source!r} has recipe format version {version!r}; this version reads up to "
                          f"{FORMAT_VERSION}: update napari-instance-tuner")
    missing = [key for key in _REQUIRED if key not in recipe]
    weights = recipe.get("weights")
    if not isinstance(weights, dict) or not weights.get("sha256") or not (weights.get("path") or weights.get("file")):
        missing.append("weights.sha256 and weights.path")
    if missing:
        raise RecipeError(f"{source!r} lacks {', '.join(repr(m) for m in missing)}")

    try:
        family = get_family(recipe["family"])
        params_from_dict(family.Params, recipe["postprocess"])
    except InstanceTunerError as exc:
        raise RecipeError(f"{source!r}: {exc}") from None


def resolve_weights(recipe: dict, weights: str | os.PathLike | None = None) -> Path:
    """Find the recipe's weights file and check its SHA-256.

    Looks at ``weights`` (a path or shipped name) when given, else at the recorded path, a file of the
    recorded name beside the recipe, and a shipped model of the recorded name.

    Raises
    ------
    WeightsError
        If no candidate exists, or the file found has another SHA-256 (the weights changed since the recipe).
    """
    info = recipe["weights"]
    if weights is not None:
        candidates = [resolve_model_path(weights)]
    else:  # a name without a suffix only as a package folder: never some other file of that name
        candidates = [p for p in _recorded_candidates(recipe) if p.suffix or (p / "rdf.yaml").is_file()]
    found = next((p for p in candidates if p.exists()), None)  # a bioimage.io package may be a folder
    if found is None:
        tried = ", ".join(str(p) for p in candidates) or "no usable name"
        raise WeightsError(f"the recipe's weights {_plain_name(info.get('file')) or info.get('name')!r} were not "
                           f"found (looked at {tried}); pass the file with --model")
    if weights is None:
        read_metadata(found)  # one of our checkpoints or packages (header only) before it is hashed
    digest = model_sha256(found)
    if digest != info["sha256"]:
        raise WeightsError(
            f"{found.name!r} has SHA-256 {digest[:12]}…, but the recipe was made with weights "
            f"{info['sha256'][:12]}…: these are different weights, so the result would differ"
        )
    return found


def _plain_name(name: Any) -> str | None:
    """``name`` if it is a bare weights name (no folder, no ``..``): a ``.safetensors`` file, a bioimage.io
    package ``.zip`` or a package folder (no suffix); else None. What it names is still checked to be one of
    ours (:func:`.checkpoint.read_metadata`) before it is hashed."""
    if not isinstance(name, str) or Path(name).suffix not in (".safetensors", ".zip", ""):
        return None
    return name if Path(name).name == name and name not in (".", "..") and "\\" not in name else None


def _recorded_candidates(recipe: dict) -> list[Path]:
    """Where a recipe's weights may be, by name only: the recorded ``.safetensors`` path when its file name is
    the recorded one, the same name beside the recipe, a shipped model of the recorded name. A recipe is
    data from someone else: a path to any other kind of file is never followed."""
    info = recipe["weights"]
    file = _plain_name(info.get("file"))
    candidates = []
    recorded = info.get("path")
    if file and isinstance(recorded, str) and Path(recorded).name == file and ".." not in Path(recorded).parts:
        candidates.append(Path(recorded))
    if file and recipe.get("_recipe_dir"):
        candidates.append(Path(recipe["_recipe_dir"]) / file)
    shipped = shipped_models()
    for name in (info.get("name"), Path(file or "").stem):
        if isinstance(name, str) and name in shipped:
            candidates.append(shipped[name])
    return candidates


def recipe_model(recipe: dict, weights: str | os.PathLike | None = None, runtime: str = "torch") -> LoadedModel:
    """Load the recipe's weights (see :func:`resolve_weights`) for ``runtime`` (``"torch"`` or ``"onnx"``, see
    :func:`~..inference.runtime.load_for_runtime`); checks the family matches."""
    from ..inference.runtime import load_for_runtime  # deferred: onnxruntime, only for that runtime

    loaded = load_for_runtime(resolve_weights(recipe, weights), runtime)
    if loaded.family.name != recipe["family"]:
        raise WeightsError(f"the weights are a {loaded.family.name} model; the recipe says {recipe['family']}")
    return loaded


def recipe_params(recipe: dict, loaded: LoadedModel) -> Any:
    """The recipe's post-processing parameters as the family's dataclass (validated)."""
    return params_from_dict(loaded.family.Params, recipe["postprocess"], loaded.family.default_params(loaded.meta))


def recipe_device(recipe: dict) -> str:
    """The torch device the recipe records, where this machine has it; else the CPU."""
    try:
        return choose_device(recipe.get("device") or "cpu")
    except InstanceTunerError:
        return "cpu"


def replay_instances(
    recipe: dict,
    image: np.ndarray,
    *,
    loaded: LoadedModel | None = None,
    device: str | None = None,
    weights: str | os.PathLike | None = None,
) -> Instances:
    """Segment ``image`` exactly as the recipe says; returns the family's :class:`~..family.Instances`.

    Parameters
    ----------
    recipe : dict
        From :func:`load_recipe` or :func:`make_recipe`.
    image : np.ndarray
        (H, W) or (H, W, C), as given to the original run.
    loaded : LoadedModel, optional
        The recipe's model, already loaded by :func:`recipe_model` (saves reloading it for many images).
    device : str, optional
        Overrides the recorded device; the recorded one is used when available, else the CPU.
    weights : path-like, optional
        The weights file, when it has moved; its SHA-256 must still match.
    """
    if loaded is None:
        loaded = recipe_model(recipe, weights)
    params = recipe_params(recipe, loaded)
    device = recipe_device(recipe) if device is None else device
    tile_size = (recipe.get("tiling") or {}).get("tile_size")
    maps = run(loaded.family.predict_maps(loaded.model, image, loaded.meta, device=device, tile_size=tile_size))
    return loaded.family.postprocess(maps, params)


def version_differences(recipe: dict) -> dict[str, tuple[str | None, str | None]]:
    """Library -> (recorded, installed) for every version that differs from the recipe's."""
    now = library_versions()
    recorded = recipe.get("versions") or {}
    return {k: (recorded.get(k), now.get(k)) for k in sorted(set(recorded) | set(now)) if recorded.get(k) != now.get(k)}


def replay(recipe: dict, image: np.ndarray, **kwargs) -> np.ndarray:
    """:func:`replay_instances`, returning only the uint32 (H, W) labels."""
    return np.asarray(replay_instances(recipe, image, **kwargs).labels, np.uint32)
