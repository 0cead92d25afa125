"""Which runtime runs a network: torch, or ONNX Runtime (:mod:`.onnx_runtime`) for the dense families on a CPU.

``auto`` picks ONNX Runtime where it applies (a three-branch or layering model, the CPU as device, no mixed
precision, ``onnxruntime`` installed) and torch elsewhere. A model loaded for ONNX Runtime
(:func:`load_for_runtime`) is a :class:`~..io.checkpoint.LoadedModel` whose ``model`` is an
:class:`~.onnx_runtime.OnnxNetwork`: metadata from the file's JSON header, SHA-256 from the file, the network
from the cache; torch is imported only to export a network the cache lacks.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from ..errors import InstanceTunerError
from ..io.checkpoint import LoadedModel, load_model, model_sha256, read_metadata, resolve_model_path, with_card_settings
from ..registry import get_family

#: The runtimes a command may ask for.
RUNTIMES = ("auto", "torch", "onnx")
#: Families whose networks ONNX Runtime runs (Mask R-CNN's detector stays on torch).
ONNX_FAMILIES = ("three-branch", "layering")


def onnxruntime_installed() -> bool:
    """Whether ``onnxruntime`` can be imported (found without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def may_have_gpu() -> bool:
    """Whether ``--device auto`` might find a GPU here without asking torch: an NVIDIA driver, or macOS (MPS)."""
    return os.path.exists("/proc/driver/nvidia") or sys.platform == "darwin"


def why_not_onnx(family: str, device: str | None, amp: bool = False, explicit: bool = False) -> str | None:
    """Why ONNX Runtime cannot run this model here (None: it can).

    Parameters
    ----------
    family : str
    device : str or None
        The requested device; ``auto`` (None) counts as the CPU on a machine without a GPU driver, and always
        when ONNX Runtime was asked for ``explicit``-ly.
    amp : bool
        Mixed precision (torch only).
    """
    requested = (device or "auto").lower()
    if family not in ONNX_FAMILIES:
        return f"the {family} family runs on torch only (ONNX Runtime runs {' and '.join(ONNX_FAMILIES)} models)"
    if amp:
        return "mixed precision (--amp) runs on torch only"
    if requested not in ("auto", "cpu"):
        return f"ONNX Runtime runs on the CPU here, not on {requested!r} (use --device cpu or --runtime torch)"
    if requested == "auto" and not explicit and may_have_gpu():
        return "this machine may have a GPU (--device auto); torch decides"
    if not onnxruntime_installed():
        return "the onnxruntime package is not installed (pip install onnxruntime)"
    return None


def choose_runtime(requested: str | None, family: str, device: str | None, amp: bool = False) -> str:
    """Resolve a requested runtime (``auto``/None, ``torch`` or ``onnx``) to ``"torch"`` or ``"onnx"``.

    Raises
    ------
    InstanceTunerError
        For an unknown runtime, or ``onnx`` where it cannot apply (the message says why).
    """
    requested = (requested or "auto").lower()
    if requested not in RUNTIMES:
        raise InstanceTunerError(f"unknown runtime {requested!r}; use {', '.join(RUNTIMES)}")
    if requested == "torch":
        return "torch"
    reason = why_not_onnx(family, device, amp, explicit=requested == "onnx")
    if requested == "onnx" and reason:
        raise InstanceTunerError(f"--runtime onnx cannot run this model: {reason}")
    return "torch" if reason else "onnx"


def model_family(name_or_path: str | os.PathLike) -> str:
    """The family a shipped model name or weights file records (from the file's JSON header alone)."""
    return read_metadata(resolve_model_path(name_or_path))["family"]


def load_for_runtime(name_or_path: str | os.PathLike, runtime: str = "torch") -> LoadedModel:
    """Load weights for ``runtime`` (``"torch"`` or ``"onnx"``, see :func:`choose_runtime`).

    For ``"onnx"`` the network is the cached export (:func:`~.onnx_runtime.load_onnx`); only a missing or
    unreadable cache file loads the weights with torch, once, to export them.
    """
    if runtime != "onnx":
        return load_model(name_or_path)
    from .onnx_runtime import export_onnx, load_onnx  # deferred: onnxruntime, only for this runtime

    path = resolve_model_path(name_or_path)
    meta = with_card_settings(read_metadata(path), path)
    family = get_family(meta["family"])
    if family.name not in ONNX_FAMILIES:
        raise InstanceTunerError(f"--runtime onnx cannot run {Path(path).name!r}: " + why_not_onnx(family.name, "cpu"))
    sha256 = model_sha256(path)
    network = load_onnx(sha256, lambda: export_onnx(load_model(path).model, sha256))
    return LoadedModel(family=family, model=network, meta=meta, path=path, sha256=sha256)
