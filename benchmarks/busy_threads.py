"""Three-branch network time at 1024 x 1024 on a busy CPU: thread policies, and what else pays.

Starts ``--busy`` processes that spin (``python -c "while 1: pass"``), then runs the network
(``predict_maps`` of ``--model``, shipped settings) ``--calls`` times per setting, alternating the settings
call by call, and prints median, 90th percentile and p90 / median per setting:

- threads: ``1``, ``2``, torch's default (all cores) and ``auto`` (:func:`.cpu.inference_threads`: the cores
  other processes leave free);
- ``--variants``: the network itself on one 1024 x 1024 tensor, with batch norm as trained or folded
  (:func:`.cpu.fold_batchnorm`), channels_last or contiguous memory, and TorchScript frozen graphs.

Usage: python benchmarks/busy_threads.py [--model three-branch-glas-v3] [--busy 1] [--calls 15] [--variants]
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time

import numpy as np

from napari_instance_tuner.core.inference import cpu
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.progress import run


def summary(times: list[float]) -> str:
    t = np.array(times)
    med, p90 = np.median(t), np.percentile(t, 90)
    return f"{med:>9.3f}{p90:>9.3f}{p90 / med:>9.2f}{t.min():>8.3f}{t.max():>8.3f}"


def thread_settings(loaded, image, calls: int) -> dict[str, list[float]]:
    cores = cpu.available_cores()
    settings = {"1 thread": "1", "2 threads": "2", f"torch default ({cores})": str(cores), "auto": ""}
    times = {name: [] for name in settings}
    for k in range(calls + 1):
        for name, value in settings.items():
            os.environ["NAPARI_INSTANCE_TUNER_THREADS"] = value
            start = time.perf_counter()
            run(loaded.family.predict_maps(loaded.model, image, loaded.meta, device="cpu"))
            if k:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    os.environ.pop("NAPARI_INSTANCE_TUNER_THREADS", None)
    return times


def network_variants(model, size: int, calls: int, threads: int) -> dict[str, list[float]]:
    import torch

    torch.set_num_threads(threads)
    x = torch.rand(1, model.config.in_channels, size, size)
    folded = cpu.fold_batchnorm(copy.deepcopy(model).eval())
    cl = torch.channels_last
    with torch.inference_mode():
        variants = {
            "as trained, contiguous": (model.eval(), x),
            "as trained, channels_last": (copy.deepcopy(model).to(memory_format=cl), x.contiguous(memory_format=cl)),
            "BN folded, contiguous": (folded, x),
            "BN folded, channels_last": (copy.deepcopy(folded).to(memory_format=cl), x.contiguous(memory_format=cl)),
            "BN folded, TorchScript frozen": (torch.jit.freeze(torch.jit.trace(folded, x)), x),
        }
        times = {name: [] for name in variants}
        for k in range(calls + 2):
            for name, (net, inp) in variants.items():
                start = time.perf_counter()
                net(inp)
                if k >= 2:  # two warm-up rounds (TorchScript profiles its first runs)
                    times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="three-branch-glas-v3")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--busy", type=int, default=1, help="spinning processes started beside the benchmark")
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--variants", action="store_true", help="time network variants instead of thread policies")
    parser.add_argument("--threads", type=int, default=1, help="threads for --variants")
    args = parser.parse_args()
    loaded = load_model(args.model)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (args.size, args.size, loaded.meta.get("in_channels", 3)), dtype=np.uint8)
    spinners = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(args.busy)]
    try:
        print(f"{args.model} at {args.size}x{args.size}, {cpu.available_cores()} cores, {args.busy} spinning "
              f"process(es), {args.calls} calls per setting, alternating")
        print(f"{'setting':<32}{'median s':>9}{'p90 s':>9}{'p90/med':>9}{'min':>8}{'max':>8}")
        if args.variants:
            size = int(args.size * loaded.meta.get("pixel_scale", 1.0))
            times = network_variants(loaded.model, size, args.calls, args.threads)
            print(f"(network alone on a {size}x{size} tensor, {args.threads} thread(s))")
        else:
            times = thread_settings(loaded, image, args.calls)
        for name, t in times.items():
            print(f"{name:<32}{summary(t)}")
    finally:
        for p in spinners:
            p.kill()


if __name__ == "__main__":
    main()
