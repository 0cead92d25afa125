"""Device choice and tiled network inference with overlap blending.

Tiles overlap by ``overlap`` pixels; each tile's output is weighted by a window that ramps linearly
from 0 to 1 across the overlap on every side that has a neighbouring tile (and stays 1 at image
edges), so the stitched maps show no seams.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from ..errors import InstanceTunerError
from ..progress import CancelToken, Progress, relay
from .image import prepare_image, resize_to
from .torch_runner import torch_tile_runner


def choose_device(requested: str | None = None) -> str:
    """Resolve ``"auto"``/None to ``"cuda"``, ``"mps"`` or ``"cpu"``; check an explicit choice exists.

    Raises
    ------
    InstanceTunerError
        If CUDA or MPS is requested but not available.
    """
    requested = (requested or "auto").lower()
    if requested == "cpu":  # no torch needed to say so (ONNX Runtime never imports it)
        return "cpu"
    import torch  # deferred: torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InstanceTunerError("CUDA was requested but no CUDA GPU is available; choose 'cpu' or 'auto'")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InstanceTunerError("MPS was requested but is not available on this machine; choose 'cpu' or 'auto'")
    if requested not in ("cpu", "mps") and not requested.startswith("cuda"):
        raise InstanceTunerError(f"unknown device {requested!r}; use auto, cpu, cuda or mps")
    return requested


def device_description(device: str) -> str:
    """Human-readable name of a device, e.g. ``"CUDA: NVIDIA H100"`` or ``"CPU (2 threads)"``."""
    import torch

    if device.startswith("cuda"):
        return f"CUDA: {torch.cuda.get_device_name(torch.device(device))}"
    if device == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads)"


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def _ramp(length: int, overlap: int, taper_start: bool, taper_end: bool) -> np.ndarray:
    w = np.ones(length, np.float32)
    ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    if taper_start and overlap:
        w[:overlap] = np.minimum(w[:overlap], ramp)
    if taper_end and overlap:
        w[-overlap:] = np.minimum(w[-overlap:], ramp[::-1])
    return w


def predict_tiled(
    model,
    image: np.ndarray,
    *,
    out_channels: int,
    tile_size: int = 512,
    overlap: int = 64,
    multiple: int = 16,
    device: str = "cpu",
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """Run ``model`` over a normalised image tile by tile; yields progress, returns sigmoid maps.

    Parameters
    ----------
    model : torch.nn.Module or OnnxNetwork
        Maps (1, C, h, w) float32 to (1, out_channels, h, w) logits; h, w multiples of ``multiple``. A torch
        network runs through :func:`.torch_runner.torch_tile_runner` (batch norm folded, the threads of
        :func:`.cpu.inference_threads`); a network with a ``tile_runner(device)`` method
        (:class:`~.onnx_runtime.OnnxNetwork`) through that.
    image : np.ndarray
        float32 (H, W, C) normalised image at network resolution.
    out_channels : int
    tile_size : int
        Tile edge in pixels (rounded up to ``multiple``). Images no larger run in one pass.
    overlap : int
        Overlap between neighbouring tiles in pixels.
    multiple : int
        The network's size divisor (2 ** depth).
    device : str
        torch device string (already resolved, see :func:`choose_device`).
    cancel : CancelToken, optional
        Checked before every tile.

    Returns
    -------
    np.ndarray
        float32 (out_channels, H, W) in [0, 1].
    """
    height, width = image.shape[:2]
    tile = -(-tile_size // multiple) * multiple
    overlap = min(overlap, tile // 2)
    # A small image runs in one pass, padded (symmetric) up to a multiple of the network's divisor.
    pad_h = (-height) % multiple if height < tile else 0
    pad_w = (-width) % multiple if width < tile else 0
    padded = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
    th, tw = min(tile, padded.shape[0]), min(tile, padded.shape[1])
    ys = _starts(padded.shape[0], th, max(1, th - overlap))
    xs = _starts(padded.shape[1], tw, max(1, tw - overlap))
    corners = [(y, x) for y in ys for x in xs]
    acc = np.zeros((out_channels,) + padded.shape[:2], np.float32)
    weight = np.zeros(padded.shape[:2], np.float32)
    run = model.tile_runner(device) if hasattr(model, "tile_runner") else torch_tile_runner(model, device)
    for i, (y, x) in enumerate(corners):
        if cancel is not None:
            cancel.check()
        probs = run(padded[y : y + th, x : x + tw])
        wy = _ramp(th, overlap, y != ys[0], y != ys[-1])
        wx = _ramp(tw, overlap, x != xs[0], x != xs[-1])
        win = wy[:, None] * wx[None, :]
        acc[:, y : y + th, x : x + tw] += probs * win
        weight[y : y + th, x : x + tw] += win
        yield Progress(i + 1, len(corners), f"tile {i + 1}/{len(corners)}")
    return (acc / np.maximum(weight, 1e-6))[:, :height, :width]


#: The flips averaged by test-time augmentation, in order: none, left-right, up-down, both.
_FLIPS = ((False, False), (False, True), (True, False), (True, True))


def predict_flips(model, image: np.ndarray, *, flips: int = 1, **kwargs) -> Generator[Progress, None, np.ndarray]:
    """:func:`predict_tiled` averaged over ``flips`` mirrored copies of the image (test-time augmentation).

    Parameters
    ----------
    model, image
        As for :func:`predict_tiled`.
    flips : int
        1 (no augmentation), 2 (plus left-right) or 4 (plus up-down and both). Mirroring is exact, so the
        averaged maps are as sharp as single ones and less sensitive to the network's orientation bias.
    **kwargs
        Passed to :func:`predict_tiled`.

    Returns
    -------
    np.ndarray
        float32 (out_channels, H, W) in [0, 1].
    """
    if flips not in (1, 2, 4):
        raise InstanceTunerError(f"test-time flips must be 1, 2 or 4, got {flips!r}")
    total = None
    for k, (up_down, left_right) in enumerate(_FLIPS[:flips]):
        view = image[::-1] if up_down else image
        view = view[:, ::-1] if left_right else view
        gen = predict_tiled(model, np.ascontiguousarray(view), **kwargs)
        probs = yield from relay(
            gen, lambda p, k=k: Progress(k * p.total + p.done, flips * p.total, f"{p.message} (flip {k + 1}/{flips})")
        )
        probs = probs[:, ::-1] if up_down else probs
        probs = probs[:, :, ::-1] if left_right else probs
        total = probs.copy() if total is None else total + probs
    return total / flips


def predict_image(
    model,
    image: np.ndarray,
    meta: dict,
    *,
    out_channels: int,
    device: str | None = None,
    tile_size: int | None = None,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """Sigmoid maps of a dense-prediction network for one image, at the image's own size.

    Normalises and rescales ``image`` as ``meta`` says (:func:`~.image.prepare_image`), runs
    :func:`predict_flips` with ``meta``'s ``test_time_flips`` (default 1), ``tile_size`` (default
    ``meta["tile_size"]`` or 512) and ``tile_overlap`` (default 64), and resizes the maps back.

    Parameters
    ----------
    model : torch.nn.Module
        Has ``size_divisor``; maps (1, C, h, w) to (1, out_channels, h, w) logits.
    image : np.ndarray
        (H, W) or (H, W, C), any real dtype.
    meta : dict
        Checkpoint metadata.
    out_channels : int
    device : str, optional
        Requested device (see :func:`choose_device`).

    Returns
    -------
    np.ndarray
        float32 (out_channels, H, W) in [0, 1].
    """
    prepared, shape = prepare_image(image, meta)
    probs = yield from predict_flips(
        model,
        prepared,
        flips=int(meta.get("test_time_flips", 1)),
        out_channels=out_channels,
        tile_size=tile_size or int(meta.get("tile_size", 512)),
        overlap=int(meta.get("tile_overlap", 64)),
        multiple=model.size_divisor,
        device=choose_device(device),
        cancel=cancel,
    )
    return np.stack([np.clip(resize_to(p, shape), 0.0, 1.0) for p in probs]).astype(np.float32, copy=False)

