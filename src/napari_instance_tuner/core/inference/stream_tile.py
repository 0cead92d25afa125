"""One window of a streamed run: the network with out-of-memory retries, then post-processing.

:class:`StreamSettings` says how a large image is cut and run; :func:`predict_window` runs a family's
``predict_maps`` on one normalised window (halving the network tile on CUDA out-of-memory);
:func:`segment_tile` reads, predicts, post-processes and classifies one tile of the grid for
:class:`~.stitch.Stitcher`. Used by :mod:`.streaming` (serial loop) and :mod:`.stream_pipeline` (overlapped).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InstanceTunerError
from ..family import Family
from ..progress import CancelToken, Progress
from ..training import loop as training
from .lazy_image import Normaliser, read_window
from .stitch import TileGrid, TileResult, classify


@dataclass(frozen=True)
class StreamSettings:
    """How a large image is cut and run.

    Attributes
    ----------
    tile : int
        Core edge in image pixels; images no larger than this (both sides) run in one piece. Rounded to 32.
    halo : int
        Context read around every core, image pixels; objects smaller than the halo are stitched exactly.
    network_tile : int or None
        Tile edge given to ``predict_maps`` (network pixels); None = the checkpoint's. Halved on CUDA OOM.
    min_network_tile : int
        Smallest network tile tried after out-of-memory errors before giving up.
    amp : bool
        Run the network under ``torch.autocast``: float16 on CUDA, bfloat16 on a CPU with native bfloat16
        (AVX512-BF16 or AMX); float32 elsewhere.
    threads : int
        CPU threads reading ahead and post-processing while the network runs (:mod:`.stream_pipeline`);
        0 = the cores this process may use (at most 8), 1 = the plain serial loop. The labels do not depend
        on it.
    """

    tile: int = 2048
    halo: int = 256
    network_tile: int | None = None
    min_network_tile: int = 64
    amp: bool = False
    threads: int = 0

    def grid(self, shape: tuple[int, int]) -> TileGrid:
        """The tile grid of an (H, W) image."""
        tile = max(32, -(-int(self.tile) // 32) * 32)
        halo = max(0, -(-int(self.halo) // 16) * 16)
        if shape[0] <= tile and shape[1] <= tile:
            tile = max(shape)
        return TileGrid((int(shape[0]), int(shape[1])), tile, halo)

    def to_dict(self) -> dict:
        """What changes the result (for recipes)."""
        return {"tile": int(self.tile), "halo": int(self.halo), "amp": bool(self.amp)}


# -- one window: network (with OOM retry) and post-processing --------------------------------------------------


def _is_cuda_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "CUDA out of memory" in str(exc)


def inference_autocast(device: str | None, amp: bool):
    """The autocast context of inference with ``amp``: float16 on CUDA, bfloat16 on a CPU with native bfloat16.

    Parameters
    ----------
    device : str or None
        The torch device the network runs on (None: the CPU).
    amp : bool
        Whether mixed precision was asked for.

    Returns
    -------
    contextlib.AbstractContextManager
        ``torch.autocast`` as above, or a null context (float32) without ``amp`` or where it would be slow.
        Unlike :func:`~..training.loop.training_autocast`, it never refuses: inference falls back to float32.
    """
    if not amp:
        return contextlib.nullcontext()
    import torch  # deferred: torch

    if device and str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.float16)
    if str(device or "cpu") == "cpu" and training.bfloat16_supported("cpu"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def predict_window(
    family: Family,
    model: Any,
    window: np.ndarray,
    meta: dict,
    settings: StreamSettings,
    state: dict,
    *,
    device: str | None = None,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, Any]:
    """``family.predict_maps`` on one normalised window; on CUDA out-of-memory halve the network tile, retry.

    ``state["network_tile"]`` holds the current network tile (starts at the settings' or the checkpoint's)
    and keeps a reduced value for the following windows. Autocast (``settings.amp``) is entered only while
    the network runs, not across the generator's yields.
    """
    state.setdefault("network_tile", settings.network_tile or int(meta.get("tile_size", 512)))
    while True:
        gen = family.predict_maps(model, window, meta, device=device, tile_size=state["network_tile"],
                                  cancel=cancel)
        try:
            while True:
                with inference_autocast(device, settings.amp):
                    item = next(gen)
                yield item
        except StopIteration as stop:
            return stop.value
        except Exception as exc:  # only CUDA OOM is handled, the rest re-raised
            if not _is_cuda_oom(exc):
                raise
            gen.close()
            _free_cuda()
            old = state["network_tile"]
            if old // 2 < settings.min_network_tile:
                raise InstanceTunerError(f"CUDA out of memory even with network tiles of {old} px; "
                                         "use --device cpu or a smaller model") from exc
            state["network_tile"] = old // 2
            yield Progress(0, 0, f"CUDA out of memory with network tiles of {old} px; "
                                 f"retrying with {old // 2} px", {"oom": True, "network_tile": old // 2})


def oom_only(progress: Progress, done: int, total: int) -> Progress | None:
    """A window's progress as the whole run reports it (tile ``done`` of ``total``): only the out-of-memory
    retries of :func:`predict_window` are passed on, for :func:`..progress.relay`."""
    return Progress(done, total, progress.message, progress.info) if progress.info.get("oom") else None


def _free_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def segment_tile(
    family: Family,
    model: Any,
    meta: dict,
    params: Any,
    image: Any,
    grid: TileGrid,
    index: int,
    normaliser: Normaliser,
    settings: StreamSettings,
    state: dict | None = None,
    *,
    device: str | None = None,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, TileResult]:
    """Read, predict, post-process and classify tile ``index`` of ``grid``; returns its :class:`TileResult`."""
    window = normaliser(read_window(image, grid.window(index)))
    tile_meta = {**meta, "normalisation": {"kind": "none"}}
    maps = yield from predict_window(family, model, window, tile_meta, settings, {} if state is None else state,
                                     device=device, cancel=cancel)
    del window
    instances = family.postprocess(maps, params)
    del maps
    return classify(instances, grid, index)
