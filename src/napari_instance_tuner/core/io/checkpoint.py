"""Checkpoints: safetensors weights with JSON metadata in the same file. Loading never unpickles.

File layout: a standard ``.safetensors`` file whose header metadata holds one key, ``"napari_instance_tuner"``,
a JSON string with at least::

    {"format_version": 1, "family": "three-branch", "architecture": {...}, "in_channels": 3,
     "normalisation": {...}, "pixel_scale": 0.5, "postprocess": {...}, "training": {...},
     "metrics": {...}, "package_version": "0.1.0"}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import WeightsError
from ..registry import get_family
from .bioimageio_import import is_package, package_sha256, read_package, read_package_meta
from .safe_write import replace_atomic

META_KEY = "napari_instance_tuner"
FORMAT_VERSION = 1
#: The shipped weights: the package's ``weights/`` folder (found from the package, wherever this module sits).
WEIGHTS_DIR = Path(str(resources.files(__name__.partition(".")[0]))).resolve() / "weights"
_MAX_HEADER = 100 * 1024 * 1024


@dataclass
class LoadedModel:
    """A network ready for inference.

    Attributes
    ----------
    family : Family
    model : torch.nn.Module
        In eval mode, on the CPU.
    meta : dict
        The checkpoint metadata.
    path : Path
    sha256 : str
        Hash of the file, recorded in recipes and in fine-tuned children.
    """

    family: Any
    model: Any
    meta: dict
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        """Display name: the shipped name or the file stem."""
        return self.meta.get("name") or self.path.stem


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_sha256(path: str | os.PathLike) -> str:
    """The identity recorded in recipes: a checkpoint's file hash, a bioimage.io package's weights hash."""
    return package_sha256(path) if is_package(path) else file_sha256(path)


def save_checkpoint(path: str | os.PathLike, state_dict: dict, meta: dict, half: bool = False) -> Path:
    """Write weights and metadata atomically.

    Parameters
    ----------
    path : path-like
        Destination ``.safetensors`` file.
    state_dict : dict[str, torch.Tensor]
    meta : dict
        JSON-able metadata (see module docstring); ``format_version`` is added.
    half : bool
        Store floating-point tensors as float16 (halves the file; loaded back as float32).
    """
    from safetensors.torch import save

    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().cpu().contiguous()
        if half and value.is_floating_point():
            value = value.half()
        tensors[key] = value
    meta = {**meta, "format_version": FORMAT_VERSION}
    data = save(tensors, metadata={META_KEY: json.dumps(meta)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomic(path, lambda fh: fh.write(data), overwrite=True)  # OS errors propagate as they are
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of one of our checkpoints, read from the file's JSON header alone (no tensors, no torch).

    A bioimage.io package (zip, folder or rdf, see :mod:`.bioimageio_import`) gives the metadata restored
    from its description.

    Raises
    ------
    WeightsError
        If the file is missing, empty, truncated, a pickle, a foreign safetensors file, or of a newer
        format version. The message names the file.
    """
    path = Path(path)
    if is_package(path):
        return read_package_meta(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
        if len(head) < 9:
            raise WeightsError(f"weights file {path.name!r} is empty or truncated ({size} bytes)")
        # A safetensors file: 8-byte little-endian header length, then the JSON header. Check this first:
        # the length's first byte can be anything, including a pickle's 0x80 or a zip's "PK".
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] != b"{" or header_len > _MAX_HEADER:
            if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1] in (2, 3, 4, 5)):
                raise WeightsError(
                    f"{path.name!r} is a PyTorch pickle file; this family loads only .safetensors checkpoints "
                    "(pickles can run code and are never unpickled)"
                )
            raise WeightsError(f"weights file {path.name!r} is not a safetensors file")
        if header_len > size - 8:
            raise WeightsError(f"weights file {path.name!r} is truncated (its header needs {header_len} bytes)")
        fh.seek(8)
        try:
            header = json.loads(fh.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WeightsError(f"the header of {path.name!r} is corrupt: {exc}") from None
    file_meta = header.get("__metadata__") or {} if isinstance(header, dict) else {}
    if META_KEY not in file_meta:
        raise WeightsError(
            f"{path.name!r} is a safetensors file but not a napari-instance-tuner checkpoint "
            "(no model metadata); it may belong to another program"
        )
    try:
        meta = json.loads(file_meta[META_KEY])
    except json.JSONDecodeError as exc:
        raise WeightsError(f"the metadata of {path.name!r} is not valid JSON: {exc}") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise WeightsError(
            f"{path.name!r} has checkpoint format version {version!r}; this version of napari-instance-tuner "
            f"reads up to {FORMAT_VERSION}: update the plugin"
        )
    for required in ("family", "architecture"):
        if required not in meta:
            raise WeightsError(f"the metadata of {path.name!r} lacks {required!r}")
    _check_meta_values(meta, path.name)
    return meta


def _check_meta_values(meta: dict, name: str) -> None:
    """Refuse metadata values that would give silently wrong results (0 objects, a crash deep inside)."""
    scale = meta.get("pixel_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or not 0 < scale <= 64:
        raise WeightsError(f"the metadata of {name!r} has pixel_scale {scale!r}; it must be a number in (0, 64]")
    channels = meta.get("in_channels", 3)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise WeightsError(f"the metadata of {name!r} has in_channels {channels!r}; it must be 1 or 3")
    for key in ("tile_size", "tile_overlap"):
        value = meta.get(key)
        low = 16 if key == "tile_size" else 0
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 1 << 16):
            raise WeightsError(f"the metadata of {name!r} has {key} {value!r}; it must be a whole number "
                               f"from {low} to {1 << 16}")
    if not isinstance(meta.get("architecture"), dict):
        raise WeightsError(f"the metadata of {name!r} has an architecture that is not a JSON object")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read (state_dict, meta) from one of our files without unpickling anything.

    Raises
    ------
    WeightsError
        As :func:`read_metadata`, and when the tensor data is corrupt or truncated.
    """
    meta = read_metadata(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"weights file {Path(path).name!r} is corrupt or truncated: {exc}") from None
    return state, meta


def load_model(name_or_path: str | os.PathLike) -> LoadedModel:
    """Load a shipped model by name, any checkpoint file or a bioimage.io package by path; the model is in
    eval mode on the CPU.

    Raises
    ------
    WeightsError
        For unknown names and unreadable, foreign or mismatching files.
    """
    path = resolve_model_path(name_or_path)
    if is_package(path):
        state, meta, sha256 = read_package(path)
    else:
        (state, meta), sha256 = read_checkpoint(path), file_sha256(path)
    meta = with_card_settings(meta, path)
    family, model = build_with_weights(meta, state, path.name)
    return LoadedModel(family=family, model=model, meta=meta, path=path, sha256=sha256)


def build_with_weights(meta: dict, state: dict, source: str) -> tuple[Any, Any]:
    """(family, network in eval mode holding ``state``) for checkpoint metadata ``meta``.

    Raises
    ------
    WeightsError
        If the family is unknown, the architecture cannot be built or ``state`` does not fit it; the message
        names ``source``.
    """
    try:
        family = get_family(meta["family"])
    except ValueError as exc:
        raise WeightsError(f"{source!r}: {exc}") from None
    try:
        model = family.build_model(meta["architecture"])
    except (TypeError, ValueError, KeyError) as exc:
        raise WeightsError(f"{source!r}: its architecture config cannot be built: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} tensors of the wrong shape (e.g. {wrong[0]})")
        raise WeightsError(f"the weights in {source!r} do not fit its {meta['family']} architecture: "
                           + "; ".join(parts))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.eval()
    return family, model


def with_card_settings(meta: dict, path: str | os.PathLike) -> dict:
    """``meta`` completed and adjusted by the model card of shipped weights; other weights are left as they are.

    The shipped weights keep their SHA-256, so what was decided after training lives in their cards:

    - ``pixel_size_um``, for weights that predate recorded pixel sizes;
    - ``test_time``: inference-only settings of the architecture (the family's ``test_time_keys``, e.g. Mask
      R-CNN's proposal and detection limits) re-measured after training. They replace the metadata's values;
      the trained values are kept under ``meta["trained_test_time"]``.

    Raises
    ------
    WeightsError
        If a card's ``test_time`` names a key its family does not allow (a card error, not the user's).
    """
    path = Path(path)
    if path.resolve().parent != WEIGHTS_DIR:
        return meta
    card = model_card(path.stem)
    if meta.get("pixel_size_um") is None:
        meta = {**meta, "pixel_size_um": card.get("pixel_size_um")}
    settings = card.get("test_time") or {}
    if settings:
        allowed = get_family(meta["family"]).test_time_keys
        foreign = sorted(set(settings) - set(allowed))
        if foreign:
            raise WeightsError(f"the model card of {path.stem!r} sets {foreign} at test time; its family allows "
                               f"only {list(allowed)}")
        arch = meta["architecture"]
        meta = {**meta, "architecture": {**arch, **settings},
                "trained_test_time": {key: arch.get(key) for key in settings}}
    return meta


def _natural_key(name: str) -> list:
    """Sort key that orders numbers by value: ``three-branch-glas-v9`` before ``three-branch-glas-v10``.

    ``re.split`` with a group alternates text and digits, so two keys compare str with str and int with int.
    """
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def shipped_models() -> dict[str, Path]:
    """Name -> path of the weights shipped inside the package, in natural order of their names."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.safetensors"), key=lambda p: _natural_key(p.stem))}


def model_card(name: str) -> dict:
    """The model card (JSON beside the shipped weights) of a shipped model, or {} if it has none."""
    card = WEIGHTS_DIR / f"{name}.json"
    return json.loads(card.read_text()) if card.is_file() else {}


def file_card(meta: dict, file: str) -> dict:
    """The model card of a checkpoint that is not shipped, from what its metadata records.

    A fine-tuned checkpoint (``meta["parent"]`` and ``meta["finetune"]``, see
    :func:`~..training.finetune.save_finetuned`) names its base model, its data, its steps and its date; a
    trained one the data it was trained on. ``meta["card"]`` (e.g. from a bioimage.io package) is kept.

    Examples
    --------
    >>> meta = {"family": "three-branch", "parent": {"name": "three-branch-glas-v3", "file": "g.safetensors"},
    ...         "finetune": {"data": [{"objects": 12}, {"objects": 7}], "history": [{}] * 40,
    ...                      "date": "2026-12-05 19:50:00"}}
    >>> file_card(meta, "mine.safetensors")["summary"]
    'fine-tuned from three-branch-glas-v3 on 2 images (19 objects), 40 steps, 2026-12-05 19:50:00'
    """
    card: dict = {"family": meta.get("family"), "file": file}
    parent, tuned = meta.get("parent"), meta.get("finetune")
    if parent and tuned:
        data = tuned.get("data") or []
        objects = sum(int(d.get("objects") or 0) for d in data)
        steps = len(tuned.get("history") or [])
        card["summary"] = (f"fine-tuned from {parent.get('name')} on {len(data)} image{'s' if len(data) != 1 else ''}"
                           f" ({objects} objects), {steps} steps, {tuned.get('date', 'date unknown')}")
        card["fine_tuned_from"] = f"{parent.get('name')} ({parent.get('file')})"
        card["fine_tune_data"] = f"{len(data)} corrected images, {objects} objects"
        card["fine_tune_steps"] = steps
        card["fine_tuned_on"] = tuned.get("date")
    elif meta.get("training", {}).get("data"):
        card["trained_on"] = meta["training"]["data"]
    return {**card, **meta.get("card", {})}


def default_model(kind: str) -> str | None:
    """The shipped model proposed for images of ``kind`` ("rgb" or "grey"), from the cards' ``default_for``.

    Examples
    --------
    >>> default_model("rgb") in shipped_models()
    True
    """
    for name in shipped_models():
        if kind in model_card(name).get("default_for", []):
            return name
    return None


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A shipped model's name or a file path -> the file path."""
    shipped = shipped_models()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    path = Path(name_or_path)
    if path.exists() or path.suffix:
        return path
    names = ", ".join(shipped) or "(none shipped)"
    raise WeightsError(f"unknown model {str(name_or_path)!r}: not a file, and the shipped models are {names}")
