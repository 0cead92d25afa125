"""Streamed-pipeline throughput without a GPU: the network replaced by cached maps, CPU side serial vs threads.

The image *is* the cached maps: a float32 (S, S, 3) array holding gland-like foreground / boundary / centroid
maps (blurred targets of touching random blobs, quantised to 8 bits), and the stand-in network returns the
window's channels (contiguous copies) as the three-branch family's maps. Everything else is the real
streamed path of ``predict``: whole-image normalisation pass, windows with halo, the three-branch
post-processing, classification and stitching into a uint32 label array. Each thread count is run on the
same image; the labels must be byte-identical to the serial loop's (``threads=1``).

With ``--slide H W`` it runs a slide-sized image instead (mostly glass, a few tissue patches of the same
maps, composed lazily), labels written to zarr as ``predict`` does, and reports time, peak memory (RSS) and
objects with the tissue filter (and with every tile run, ``--all-tiles``).

Usage: python benchmarks/stream_throughput.py [--size 8192] [--threads 1 2] [--tile 2048] [--halo 256]
       python benchmarks/stream_throughput.py --slide 30000 40000 --threads 2 [--all-tiles]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import gland_like_maps

from napari_instance_tuner.core.families.three_branch.postprocess import ThreeBranchParams
from napari_instance_tuner.core.family import Maps
from napari_instance_tuner.core.inference.streaming import StreamSettings, stream_segment
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.registry import get_family

BLOCK = 2000  # the cached maps repeat with this period (not a multiple of the tile: seams differ)
#: Post-processing that finds every blob of the cached maps (the defaults' erosions drop the small ones).
PARAMS = ThreeBranchParams(boundary_erosion=2, centroid_erosion=2)


class CachedMaps:
    """The three-branch family with ``predict_maps`` replaced by reading the maps from the window's channels."""

    def __init__(self) -> None:
        self.family = get_family("three-branch")
        self.name = self.family.name

    def predict_maps(self, model, image, meta, *, device=None, tile_size=None, cancel=None):
        yield from ()
        names = ("foreground", "boundary", "centroid")  # contiguous float32 maps, as a network returns them
        return Maps(arrays={n: np.ascontiguousarray(image[..., k]) for k, n in enumerate(names)})

    def postprocess(self, maps, params):
        return self.family.postprocess(maps, params)


class Loaded:
    def __init__(self) -> None:
        self.family, self.model = CachedMaps(), None
        self.meta = {"in_channels": 3, "normalisation": {"kind": "none"}}


def cached_block(objects: int) -> np.ndarray:
    """float32 (BLOCK, BLOCK, 3) gland-like maps in [0, 1] (8-bit steps)."""
    maps = gland_like_maps(BLOCK, n_objects=objects, seed=0)
    names = ("foreground", "boundary", "centroid")
    return np.stack([np.round(maps[k] * 255) / np.float32(255) for k in names], -1).astype(np.float32)


def tiled_image(block: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    reps = (-(-shape[0] // BLOCK), -(-shape[1] // BLOCK), 1)
    return np.ascontiguousarray(np.tile(block, reps)[: shape[0], : shape[1]])


class LazySlide:
    """A (H, W, 3) float32 slide of maps made on the fly: glass (zero maps) with tissue blocks.

    Windows are composed when sliced, so a 40 000 x 30 000 slide takes no memory (as a tiled TIFF read
    lazily would not).
    """

    def __init__(self, block: np.ndarray, shape: tuple[int, int], patches: int = 6, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.block, self.shape, self.dtype = block, (shape[0], shape[1], 3), np.dtype(np.float32)
        self.origins = [(int(rng.integers(0, shape[0] - BLOCK)), int(rng.integers(0, shape[1] - BLOCK)))
                        for _ in range(patches)]

    def __getitem__(self, key):
        ys, xs = np.arange(self.shape[0])[key[0]], np.arange(self.shape[1])[key[1]]
        out = np.zeros((ys.size, xs.size, 3), np.float32)
        for oy, ox in self.origins:
            iy = np.flatnonzero((ys >= oy) & (ys < oy + BLOCK))
            ix = np.flatnonzero((xs >= ox) & (xs < ox + BLOCK))
            if iy.size and ix.size:  # contiguous runs: a plain block copy for steps of 1
                out[iy[0] : iy[-1] + 1, ix[0] : ix[-1] + 1] = self.block[ys[iy] - oy][:, xs[ix] - ox]
        return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(image, settings, tile_filter=None, out=None):
    start = time.perf_counter()
    result = run(stream_segment(Loaded(), image, PARAMS, settings=settings, tile_filter=tile_filter,
                                out=out))
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tile", type=int, default=2048)
    parser.add_argument("--halo", type=int, default=256)
    parser.add_argument("--objects", type=int, default=240, help="objects per cached 2000x2000 block")
    parser.add_argument("--slide", type=int, nargs=2, metavar=("H", "W"))
    parser.add_argument("--all-tiles", action="store_true", help="with --slide: also run every tile")
    args = parser.parse_args()
    from napari_instance_tuner.core.inference.predict import choose_device

    choose_device(None)  # torch imported before any timing
    block = cached_block(args.objects)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; tile {args.tile}, halo {args.halo}")
    if args.slide:
        return slide(block, tuple(args.slide), args)
    image = tiled_image(block, (args.size, args.size))
    megapixels = image.shape[0] * image.shape[1] / 1e6
    print(f"{args.size}x{args.size} image of cached gland-like maps ({megapixels:.0f} MP)")
    print(f"{'threads':>8}{'seconds':>10}{'CPU s':>8}{'MP/s':>8}{'objects':>9}  labels")
    reference = None
    for threads in args.threads:
        cpu = time.process_time()
        seconds, result = timed(image, StreamSettings(tile=args.tile, halo=args.halo, threads=threads))
        cpu = time.process_time() - cpu
        if reference is None:
            reference, same = result.labels, "reference"
        else:
            same = "identical" if result.labels.tobytes() == reference.tobytes() else "DIFFERENT"
        print(f"{threads:>8}{seconds:>10.2f}{cpu:>8.2f}{megapixels / seconds:>8.1f}{result.count:>9}  {same}")
        del result


def slide(block: np.ndarray, shape: tuple[int, int], args) -> None:
    import tempfile

    from napari_instance_tuner.core.inference.tissue import thumbnail, tissue_filter, tissue_mask

    image = LazySlide(block, shape)
    megapixels = shape[0] * shape[1] / 1e6
    print(f"{shape[0]}x{shape[1]} synthetic slide ({megapixels:.0f} MP, {len(image.origins)} tissue patches of "
          f"{BLOCK}x{BLOCK}, read lazily), labels to zarr; peak RSS before {peak_rss_mib():.0f} MiB")
    settings = StreamSettings(tile=args.tile, halo=args.halo, threads=args.threads[-1])
    start = time.perf_counter()
    thumb, down = thumbnail([image], [1.0])
    keep = tissue_filter(tissue_mask(1 - thumb), 1 / down, margin=args.halo)  # dark maps: as stain on glass
    mask_s = time.perf_counter() - start
    runs = [("tissue filter", keep)] + ([("every tile", None)] if args.all_tiles else [])
    for name, tile_filter in runs:
        with tempfile.TemporaryDirectory() as folder:
            seconds, result = timed(image, settings, tile_filter, out=f"{folder}/labels.zarr")
        print(f"{name:<14} threads {settings.threads}: {seconds:.1f} s ({megapixels / seconds:.0f} MP/s of slide), "
              f"{result.tiles} of {len(settings.grid(shape))} tiles run, {result.count} objects, "
              f"peak RSS {peak_rss_mib():.0f} MiB" + (f" (thumbnail and mask {mask_s:.1f} s)" if tile_filter else ""))
        del result


if __name__ == "__main__":
    main()
