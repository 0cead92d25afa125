"""Cold start: what a fresh process spends before and on its first network call, and the CLI end to end.

Each run is a new Python process that times: ``import torch``, importing the package, loading the model,
the first ``predict_maps`` call on a ``--size`` image and three warm calls after it. Then the CLI
``napari-instance-tuner predict --model MODEL`` runs on the image saved as PNG (wall time of the whole
process, and the seconds of work it reports).

``--runtimes torch onnx`` (session 13) times the CLI alone with each ``--runtime``, alternating, after one
warm-up run per runtime (the ONNX one exports the network into a fresh cache folder, as a user's first run
does); each row also says whether the process imported torch.

Usage: python benchmarks/cold_start.py [--model three-branch-glas-v3] [--size 1024] [--runs 3] [--image PNG]
       [--runtimes torch onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PHASES = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import numpy as np
from skimage.io import imread
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.progress import run
t2 = time.perf_counter()
loaded = load_model(sys.argv[1])
t3 = time.perf_counter()
image = imread(sys.argv[2])
calls = []
for _ in range(4):
    start = time.perf_counter()
    run(loaded.family.predict_maps(loaded.model, image, loaded.meta, device="cpu"))
    calls.append(time.perf_counter() - start)
print(json.dumps({"import torch": t1 - t0, "import package": t2 - t1, "load model": t3 - t2,
                  "first call": calls[0], "warm call": float(np.median(calls[1:]))}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="three-branch-glas-v3")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image", help="a PNG to segment (default: random RGB noise of --size)")
    parser.add_argument("--runtimes", nargs="+", choices=("torch", "onnx", "auto"),
                        help="time only the CLI, with each --runtime in turn (see the module docstring)")
    args = parser.parse_args()
    from skimage.io import imsave

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.image) if args.image else Path(tmp) / "image.png"
        if not args.image:
            rng = np.random.default_rng(0)
            imsave(path, rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8), check_contrast=False)
        if args.runtimes:
            return cli_runtimes(args, path, Path(tmp))
        rows = []
        for k in range(args.runs):
            out = subprocess.run([sys.executable, "-c", PHASES, args.model, str(path)], capture_output=True,
                                 text=True, check=True)
            phases = json.loads(out.stdout.strip().splitlines()[-1])
            start = time.perf_counter()
            cli = subprocess.run([sys.executable, "-m", "napari_instance_tuner.cli", "predict", "--model", args.model,
                                  "--out", str(Path(tmp) / f"out{k}"), str(path)], capture_output=True, text=True,
                                 check=True)
            phases["CLI end to end"] = time.perf_counter() - start
            work = [line for line in cli.stdout.splitlines() if "s of work" in line]
            phases["CLI work (its report)"] = float(work[-1].split(";")[-1].split("s of work")[0]) if work else np.nan
            rows.append(phases)
    print(f"{args.model}, image {path.name if args.image else 'random'} {args.size}x{args.size}, {args.runs} fresh "
          "processes (seconds: median, min, max)")
    for key in rows[0]:
        values = np.array([r[key] for r in rows])
        print(f"{key:<24}{np.median(values):>8.2f}{values.min():>8.2f}{values.max():>8.2f}")
    ratio = np.array([r["first call"] / r["warm call"] for r in rows])
    print(f"{'first / warm call':<24}{np.median(ratio):>8.2f}{ratio.min():>8.2f}{ratio.max():>8.2f}")


#: The CLI in a fresh process, reporting on its last line whether torch was imported.
CLI = ("import sys; from napari_instance_tuner.cli import main; rc = main(sys.argv[1:]); "
       "print('torch' in sys.modules); sys.exit(rc)")


def cli_runtimes(args, path: Path, tmp: Path) -> None:
    """End-to-end CLI seconds per ``--runtime``, alternating; one untimed warm-up run of each first."""
    env = {**os.environ, "NAPARI_INSTANCE_TUNER_CACHE": str(tmp / "cache")}  # the first ONNX run exports

    def once(runtime: str, k: int) -> tuple[float, float, bool]:
        start = time.perf_counter()
        cli = subprocess.run([sys.executable, "-c", CLI, "predict", "--model", args.model, "--runtime", runtime,
                              "--quiet", "--out", str(tmp / f"{runtime}{k}"), str(path)], capture_output=True,
                             text=True, check=True, env=env)
        seconds = time.perf_counter() - start
        work = [line for line in cli.stdout.splitlines() if "s of work" in line]
        return seconds, float(work[-1].split(";")[-1].split("s of work")[0]), cli.stdout.split()[-1] == "True"

    warm = {r: once(r, -1)[0] for r in args.runtimes}
    rows = {r: [] for r in args.runtimes}
    for k in range(args.runs):
        for r in args.runtimes:
            rows[r].append(once(r, k))
    print(f"{args.model}, image {path.name}, CLI predict end to end, {args.runs} fresh processes per runtime, "
          "alternating (seconds: median, min, max; work: the CLI's own report)")
    for r, values in rows.items():
        wall = np.array([v[0] for v in values])
        work = np.array([v[1] for v in values])
        torch = sorted({v[2] for v in values})
        print(f"--runtime {r:<6} first run {warm[r]:6.2f}   end to end {np.median(wall):6.2f}{wall.min():6.2f}"
              f"{wall.max():6.2f}   work {np.median(work):5.2f}   torch imported: {torch}")


if __name__ == "__main__":
    main()
