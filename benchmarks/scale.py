"""Peak memory and throughput of streamed segmentation of large RGB images with the shipped three-branch model.

For every size, a synthetic H&E-like RGB image is written as a tiled TIFF (512 x 512 tiles, written tile by
tile, so this script never holds it) and segmented by ``napari-instance-tuner predict`` in a fresh
subprocess: serially (``--workers 0``) and on an embedded dask cluster (``--workers 2``). The peak resident
memory of the whole process tree (client, scheduler and worker processes) is sampled every 0.1 s with psutil.

    python benchmarks/scale.py                         # 2048, 4096, 8192; serial and 2 workers; 4 flips
    python benchmarks/scale.py --sizes 2048 --flips 1 --workers 0   # quick

Columns: size, workers, seconds (wall, including the subprocess's imports and cluster start), MP/s (image
megapixels per wall second), peak RSS (GB, sum over the process tree), objects found.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def synthetic_tile(y: int, x: int, size: int, seed: int = 0) -> np.ndarray:
    """A deterministic H&E-like RGB tile: pink background with purple glandular rings and nuclei."""
    rng = np.random.default_rng((seed, y, x))
    yy, xx = np.mgrid[y : y + size, x : x + size].astype(np.float32)
    phase = np.sin(yy / 97.0) * np.cos(xx / 83.0) + 0.5 * np.sin((yy + xx) / 151.0)
    ring = np.abs(phase) < 0.25
    base = np.empty((size, size, 3), np.float32)
    base[...] = (232, 190, 215)
    base[ring] = (120, 60, 150)
    base += rng.normal(0, 12, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def write_tiled_tiff(path: Path, size: int, tile: int = 512) -> None:
    """Write a (size, size, 3) uint8 tiled TIFF from tiles made on the fly."""
    import tifffile

    def tiles():
        for y in range(0, size, tile):
            for x in range(0, size, tile):
                yield synthetic_tile(y, x, tile)

    tifffile.imwrite(path, tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                     compression="zlib")


def model_with_flips(folder: Path, flips: int, name: str = "three-branch-glas") -> str:
    """The shipped model ``name``, or a copy whose metadata asks for ``flips`` test-time flips."""
    from napari_instance_tuner.core.io.checkpoint import read_checkpoint, resolve_model_path, save_checkpoint

    path = resolve_model_path(name)
    state, meta = read_checkpoint(path)
    if int(meta.get("test_time_flips", 1)) == flips:
        return str(path)
    meta["test_time_flips"] = flips
    return str(save_checkpoint(folder / f"{name}-flips{flips}.safetensors", state, meta))


def tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measure(cmd: list[str]) -> tuple[float, int, str]:
    """Run ``cmd``; return (wall seconds, peak tree RSS in bytes, stdout)."""
    import psutil

    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(child.pid)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return seconds, peak[0], out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="0 = serial")
    parser.add_argument("--flips", type=int, default=4, choices=[1, 2, 4], help="test-time flips (model: 4)")
    parser.add_argument("--model", default="three-branch-glas", help="shipped three-branch model (session 23: v9)")
    parser.add_argument("--tile", type=int, default=2048)
    parser.add_argument("--halo", type=int, default=256)
    parser.add_argument("--threads", type=int, help="torch threads per process (default: cores / workers)")
    parser.add_argument("--keep", help="folder for the images and outputs (default: a temporary one)")
    args = parser.parse_args(argv)

    folder = Path(args.keep or tempfile.mkdtemp(prefix="scale-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    model = model_with_flips(folder, args.flips, args.model)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"{args.model}, {args.flips} flips, tile {args.tile} + halo {args.halo}, {cores} cores", flush=True)
    header = f"{'size':>6} {'workers':>7} {'seconds':>8} {'MP/s':>6} {'peak RSS GB':>11} {'objects':>8}"
    print(header, flush=True)
    rows = []
    for size in args.sizes:
        image = folder / f"rgb{size}.tif"
        if not image.exists():
            write_tiled_tiff(image, size)
        for workers in args.workers:
            out = folder / f"out{size}w{workers}"
            threads = args.threads or max(1, cores // max(1, workers))
            cmd = [sys.executable, "-m", "napari_instance_tuner.cli", "predict", "--model", model, "--out", str(out),
                   "--tile", str(args.tile), "--halo", str(args.halo), "--device", "cpu", "--overwrite", "--quiet",
                   "--workers", str(workers), "--threads-per-worker", str(threads), str(image)]
            env_threads = ["env", f"OMP_NUM_THREADS={threads}"] if workers == 0 else []
            seconds, peak, _ = measure(env_threads + cmd)
            side = json.loads((out / f"rgb{size}.tuner.json").read_text())
            row = (size, workers, seconds, size * size / 1e6 / seconds, peak / 1e9, side["objects"])
            rows.append(row)
            print(f"{row[0]:>6} {row[1]:>7} {row[2]:>8.1f} {row[3]:>6.2f} {row[4]:>11.2f} {row[5]:>8}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
