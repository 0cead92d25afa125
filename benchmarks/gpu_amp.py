"""Inference with ``--amp`` against float32, labels and throughput, for the shipped models.

``--amp`` is float16 autocast on a GPU and bfloat16 autocast on a CPU with native bfloat16 (``--device cpu``).

For each shipped model, real images of its domain are segmented twice on ``--device`` through the streaming
path (:func:`~napari_instance_tuner.core.inference.streaming.stream_segment`, channels_last, tiles of ``--tile`` px): in
float32 and with ``--amp``, each timed. The two label images are compared by object F1 (the AMP
labels scored against the float32 ones; the goal is >= 0.99). Throughput (megapixels per second, the
network, the post-processing and the stitching included, after one warm-up image) is measured on a
synthetic H&E-like RGB image of ``--size`` px with the three-branch model, in both precisions.

    python benchmarks/gpu_amp.py --glas DATA/glas/testA --bbbc DATA/bbbc010/train --dsb DATA/dsb2018/train
    python benchmarks/gpu_amp.py --network-only     # the network alone on a 2048 x 2048 tile
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def _images(folder: str | None, limit: int) -> list[np.ndarray]:
    if not folder:
        return []
    from napari_instance_tuner.core.training.data import read_image

    paths = sorted(p for p in (Path(folder) / "images").iterdir() if p.is_file())[:limit]
    return [read_image(p) for p in paths]


def segment(loaded, image, params, device: str, amp: bool, tile: int) -> np.ndarray:
    from napari_instance_tuner.core.inference.streaming import StreamSettings, stream_segment
    from napari_instance_tuner.core.progress import run

    settings = StreamSettings(tile=tile, halo=min(256, tile // 4), amp=amp)
    return np.asarray(run(stream_segment(loaded, image, params, settings=settings, device=device)).labels)


def compare(name: str, images: list[np.ndarray], device: str, tile: int) -> dict:
    """Object F1 of AMP labels against float32 labels, image by image."""
    from napari_instance_tuner.core.evaluation.metrics import object_f1
    from napari_instance_tuner.core.io.checkpoint import load_model

    loaded = load_model(name)
    params = loaded.family.default_params(loaded.meta)
    f1s, counts, seconds = [], [], {False: [], True: []}
    segment(loaded, images[0], params, device, True, tile)  # warm-up of both precisions' kernels
    for image in images:
        labels = {}
        for amp in (False, True):
            start = time.perf_counter()
            labels[amp] = segment(loaded, image, params, device, amp, tile)
            seconds[amp].append(time.perf_counter() - start)
        full, half = labels[False], labels[True]
        f1s.append(1.0 if full.max() == 0 and half.max() == 0 else object_f1(half, full)["f1"])
        counts.append(int(len(np.unique(full)) - 1))
    return {"model": name, "images": len(images), "objects": int(sum(counts)),
            "f1_min": float(min(f1s)), "f1_mean": float(np.mean(f1s)),
            "s_per_image_float32": round(float(np.median(seconds[False])), 3),
            "s_per_image_amp": round(float(np.median(seconds[True])), 3)}


def throughput(size: int, device: str, amp: bool, tile: int, repeats: int) -> float:
    """Megapixels per second of the three-branch model on a synthetic (size, size, 3) image."""
    import torch
    from scale import synthetic_tile

    from napari_instance_tuner.core.io.checkpoint import load_model

    loaded = load_model("three-branch-glas")
    params = loaded.family.default_params(loaded.meta)
    image = np.zeros((size, size, 3), np.uint8)
    for y in range(0, size, 512):
        for x in range(0, size, 512):
            image[y : y + 512, x : x + 512] = synthetic_tile(y, x, 512)
    segment(loaded, image[:tile, :tile], params, device, amp, tile)  # warm-up (cuDNN, allocator)
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        segment(loaded, image, params, device, amp, tile)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return size * size / 1e6 / float(np.median(times))


def network_throughput(device: str, amp: bool, tile: int, repeats: int = 10) -> float:
    """Megapixels per second of the three-branch network alone (one (1, 3, tile, tile) batch, channels_last)."""
    import torch

    from napari_instance_tuner.core.inference.streaming import inference_autocast
    from napari_instance_tuner.core.io.checkpoint import load_model

    model = load_model("three-branch-glas").model.to(device).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, tile, tile, device=device).contiguous(memory_format=torch.channels_last)
    cuda = device.startswith("cuda")
    context = inference_autocast(device, amp)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.inference_mode(), context:
        for _ in range(3):
            model(x)
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
        sync()
    return repeats * tile * tile / 1e6 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--glas", help="GlaS split folder (images/)")
    parser.add_argument("--bbbc", help="BBBC010 split folder (images/)")
    parser.add_argument("--dsb", help="DSB2018 split folder (images/)")
    parser.add_argument("--limit", type=int, default=10, help="images per dataset")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tile", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--network-only", action="store_true", help="only the network's MP/s (float32, AMP)")
    args = parser.parse_args()

    import torch

    device = args.device
    print(f"device {device}: {torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}, "
          f"torch {torch.__version__}")
    if args.network_only:
        for amp in (False, True):
            mps = network_throughput(device, amp, args.tile)
            print(json.dumps({"network_only": True, "amp": amp, "tile": args.tile, "MP_per_s": round(mps, 1)}))
        return
    rows = []
    for name, folder in (("three-branch-glas", args.glas), ("layering-bbbc010", args.bbbc),
                         ("maskrcnn-dsb2018", args.dsb)):
        images = _images(folder, args.limit)
        if images:
            rows.append(compare(name, images, device, args.tile))
            print(json.dumps(rows[-1]), flush=True)
    for amp in (False, True):
        mps = throughput(args.size, device, amp, args.tile, args.repeats)
        print(json.dumps({"size": args.size, "amp": amp, "tile": args.tile, "MP_per_s": round(mps, 2)}), flush=True)


if __name__ == "__main__":
    main()
