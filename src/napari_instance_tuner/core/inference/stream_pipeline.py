"""The streamed tile loop overlapped: reading, the network, post-processing and stitching run at the same time.

A streamed run (:func:`.streaming.stream_segment`) does four things per tile: read and normalise the window,
run the network, post-process its maps into instances (and sort them for stitching), and paint the finals
into the label array. Run one after the other on one thread, the CPU side (post-processing above all) limits
the whole run: on an H100 the network alone ran 149 MP/s, the serial pipeline 1.70 MP/s.

Here the network stays on the calling thread (one model, one device, out-of-memory retries and cancellation as
before); one reader thread reads and normalises the next two windows ahead (the lazy reader of a slide or zarr
store is only ever used by that one thread, never concurrently), and a thread pool post-processes the finished
maps of earlier tiles; the calling thread stitches tiles as their post-processing ends. NumPy, SciPy and
OpenCV release the GIL in their inner loops, so the threads use the cores. :class:`~.stitch.Stitcher` paints
tiles in index order whatever order they finish in, so the labels are byte-identical to the serial loop's.

At most ``2 * threads`` tiles' maps and two windows are held at once (memory stays bounded).
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from ..progress import CancelToken, Progress, relay
from .lazy_image import read_window
from .stitch import Stitcher, TileGrid, TileResult, classify
from .stream_tile import oom_only, predict_window

#: Upper bound of the automatic thread count (beyond it the stitching thread is the limit).
MAX_AUTO_THREADS = 8


def auto_threads(threads: int = 0) -> int:
    """Threads of the CPU side: ``threads`` when > 0, else the cores this process may use (at most 8).

    Parameters
    ----------
    threads : int
        Asked-for count; 0 (or less) = automatic.

    Returns
    -------
    int
        At least 1.
    """
    if threads > 0:
        return int(threads)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_AUTO_THREADS, cores))


def _postprocess(family: Any, maps: Any, params: Any, grid: TileGrid, index: int) -> TileResult:
    return classify(family.postprocess(maps, params), grid, index)


def pipelined_tiles(
    loaded: Any,
    params: Any,
    source: Any,
    grid: TileGrid,
    normaliser: Any,
    settings: Any,
    stitcher: Stitcher,
    threads: int,
    *,
    device: str | None = None,
    cancel: CancelToken | None = None,
    indices: Iterable[int] | None = None,
) -> Generator[Progress, None, int]:
    """Run every tile of ``grid`` with the network overlapped with reading, post-processing and stitching.

    Parameters
    ----------
    loaded : LoadedModel
        ``family``, ``model`` and ``meta`` are used.
    params : dataclass
        The family's post-processing parameters.
    source : array-like
        The lazy (H, W[, C]) image (see :func:`.lazy_image.open_image`); read on one reader thread.
    grid : TileGrid
    normaliser : Normaliser
        Whole-image normalisation (:func:`.lazy_image.fit_normaliser`).
    settings : StreamSettings
    stitcher : Stitcher
        Receives every tile's result (painted in index order).
    threads : int
        Pool threads (>= 1) for post-processing.
    device : str, optional
        torch device of the network.
    cancel : CancelToken, optional
        Checked before every tile; pending work is dropped when it fires.
    indices : iterable of int, optional
        The tiles to run (default all); the caller gives ``stitcher`` the others.

    Yields
    ------
    Progress
        Out-of-memory retries, and one message per stitched tile ("tile k/n").

    Returns
    -------
    int
        Number of tiles run.
    """
    order = list(range(len(grid)) if indices is None else indices)
    total = len(grid)
    family, model, meta = loaded.family, loaded.model, loaded.meta
    tile_meta = {**meta, "normalisation": {"kind": "none"}}
    state: dict = {}
    threads = max(1, int(threads))
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stream-tile")
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-read")  # one thread uses the reader
    reads: deque[Future] = deque()
    posts: set[Future] = set()
    done = total - len(order)

    def read(index: int):
        return normaliser(read_window(source, grid.window(index)))

    def stitch(finished: Iterable[Future]) -> Generator[Progress, None, None]:
        nonlocal done
        for future in finished:
            posts.discard(future)
            stitcher.add(future.result())
            done += 1
            yield Progress(done, total, f"tile {done}/{total}")

    try:
        ahead = iter(order)
        reads = deque(reader.submit(read, i) for i in itertools.islice(ahead, 2))
        for index in order:
            if cancel is not None:
                cancel.check()
            window = reads.popleft().result()
            following = next(ahead, None)
            if following is not None:
                reads.append(reader.submit(read, following))
            gen = predict_window(family, model, window, tile_meta, settings, state, device=device, cancel=cancel)
            maps = yield from relay(gen, lambda p: oom_only(p, done, total))
            del window
            posts.add(pool.submit(_postprocess, family, maps, params, grid, index))
            del maps
            finished = [f for f in posts if f.done()]
            if len(posts) - len(finished) >= 2 * threads:  # bounded memory: wait for one
                finished = list(wait(posts, return_when=FIRST_COMPLETED).done)
            yield from stitch(finished)
        while posts:
            if cancel is not None:
                cancel.check()
            yield from stitch(wait(posts, return_when=FIRST_COMPLETED).done)
    finally:
        for future in list(reads) + list(posts):
            future.cancel()
        reader.shutdown(wait=True)
        pool.shutdown(wait=True)
    return len(order)

