"""Side by side with Cellpose 3 and StarDist: network and post-processing on the same real nuclei mosaics.

Optional extras, installed only for this benchmark (never test dependencies), e.g. in a separate venv that
also sees the project's packages::

    python -m venv .venv-peers
    echo "$(python -c 'import site; print(site.getsitepackages()[0])')" > .venv-peers/lib/python3.11/site-packages/main.pth
    .venv-peers/bin/pip install "cellpose<4" stardist tensorflow-cpu

Peers run with random weights (nothing is downloaded; speed does not depend on the weights). On each
``--size`` mosaic of dense DSB2018 nuclei crops (``_nuclei_mosaic.py``), alternating within every round:

- networks: ours (``maskrcnn-dsb2018`` as shipped; ``three-branch-glas-v3`` at pixel scale 1), Cellpose 3's
  CPnet (``cellpose.core.run_net``: 224-pixel tiles in batches of 8, as ``CellposeModel.eval``), StarDist 2D
  (32 rays, grid 2, one pass);
- post-processing of one slider change: ours (Mask R-CNN on its cached detections with the shipped
  parameters; three-branch on maps made from the mosaic's ground truth), Cellpose's ``compute_masks`` on
  flows made from the ground truth, StarDist's NMS and rendering on probabilities and distances made
  from the ground truth.

Usage: .venv-peers/bin/python benchmarks/peers.py --data ../shared/data/dsb2018/train [--size 1024]
       [--mosaics 2] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _nuclei_mosaic import nuclei_mosaic


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ours(image, gt):
    """name -> callable for our networks and post-processing on ``image`` (uint8 RGB) and labels ``gt``."""
    from napari_instance_tuner.core.families.three_branch.postprocess import ThreeBranchParams
    from napari_instance_tuner.core.families.three_branch.targets import TargetConfig, make_targets
    from napari_instance_tuner.core.family import Maps
    from napari_instance_tuner.core.io.checkpoint import load_model
    from napari_instance_tuner.core.params import params_from_dict
    from napari_instance_tuner.core.progress import run

    nuclei, glands = load_model("maskrcnn-dsb2018"), load_model("three-branch-glas-v3")
    glands_meta = {**glands.meta, "pixel_scale": 1.0}
    params = params_from_dict(nuclei.family.Params, nuclei.meta["postprocess"])
    cached = run(nuclei.family.predict_maps(nuclei.model, image, nuclei.meta, device="cpu"))
    maps = Maps(dict(zip(glands.family.map_names, make_targets(gt, TargetConfig(), 1.0).astype(np.float32))))
    return {
        "net: ours, Mask R-CNN (maskrcnn-dsb2018)": lambda: run(
            nuclei.family.predict_maps(nuclei.model, image, nuclei.meta, device="cpu")),
        "net: ours, three-branch U-Net": lambda: run(
            glands.family.predict_maps(glands.model, image, glands_meta, device="cpu")),
        "post: ours, Mask R-CNN (shipped params)": lambda: nuclei.family.postprocess(cached, params),
        "post: ours, three-branch (GT maps)": lambda: glands.family.postprocess(maps, ThreeBranchParams()),
    }


def cellpose(image, gt):
    import torch
    from cellpose import core, dynamics
    from cellpose.resnet_torch import CPnet

    net = CPnet([2, 32, 64, 128, 256], 3, sz=3, mkldnn=False, max_pool=True, diam_mean=30.0).eval()
    grey = image.mean(-1, dtype=np.float32) / 255.0
    x = np.stack([grey, np.zeros_like(grey)], -1)[None]  # (Lz, Ly, Lx, nchan), as CellposeModel.eval
    flows = dynamics.masks_to_flows(gt.astype(np.int32), device=torch.device("cpu"))
    dP, cellprob = (flows * 5.0).astype(np.float32), np.where(gt > 0, 5.0, -5.0).astype(np.float32)
    return {
        "net: Cellpose 3 (CPnet, random)": lambda: core.run_net(net, x, batch_size=8, augment=False, bsize=224),
        "post: Cellpose 3 compute_masks (GT flows)": lambda: dynamics.compute_masks(
            dP, cellprob, niter=200, device=torch.device("cpu")),
    }


def stardist(image, gt, tmp):
    from stardist import edt_prob, star_dist
    from stardist.models import Config2D, StarDist2D

    model = StarDist2D(Config2D(n_rays=32, grid=(2, 2), n_channel_in=1), name="random", basedir=tmp)
    grey = image.mean(-1, dtype=np.float32) / 255.0
    prob = np.ascontiguousarray(edt_prob(gt)[::2, ::2], np.float32)
    dist = np.ascontiguousarray(star_dist(gt, 32)[::2, ::2], np.float32)
    return {
        "net: StarDist 2D (random)": lambda: model.predict(grey),
        "post: StarDist NMS + labels (GT maps)": lambda: model._instances_from_prediction(
            grey.shape, prob, dist, prob_thresh=0.5, nms_thresh=0.4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="dsb2018 split folder (images/, labels/)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--mosaics", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ["NAPARI_INSTANCE_TUNER_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.mosaics):
            image, gt = nuclei_mosaic(args.data, args.size, seed, with_labels=True)
            runs = ours(image, gt)
            for name in ("Cellpose 3", "StarDist"):
                try:
                    if name == "StarDist":
                        import tensorflow as tf

                        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
                        tf.config.threading.set_inter_op_parallelism_threads(1)
                        runs.update(stardist(image, gt, tmp))
                    else:
                        runs.update(cellpose(image, gt))
                except Exception as exc:  # noqa: BLE001 - an optional peer that cannot run is reported
                    failed[name] = f"{type(exc).__name__}: {exc}"
            for name, fn in list(runs.items()):  # warm-up; a peer that fails is reported, not timed
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001
                    failed[name] = f"{type(exc).__name__}: {exc}"
                    del runs[name]
            for _ in range(args.rounds):
                for name, fn in runs.items():
                    times.setdefault(name, []).append(timed(fn))
    print(f"{args.mosaics} dense nuclei mosaics of {args.size}x{args.size}, {args.rounds} rounds, {args.threads} "
          f"thread(s), settings alternating within each round (seconds)")
    print(f"{'what':<46}{'median':>9}{'min':>9}{'max':>9}")
    for name, t in times.items():
        print(f"{name:<46}{np.median(t):>9.3f}{min(t):>9.3f}{max(t):>9.3f}")

    def ratio(a: str, b: str) -> None:
        if a in times and b in times:
            print(f"{b} / {a}: {np.median(times[b]) / np.median(times[a]):.1f}x")

    print("ratios of medians (peer / ours):")
    for peer in ("net: Cellpose 3 (CPnet, random)", "net: StarDist 2D (random)"):
        ratio("net: ours, Mask R-CNN (maskrcnn-dsb2018)", peer)
        ratio("net: ours, three-branch U-Net", peer)
    for peer in ("post: Cellpose 3 compute_masks (GT flows)", "post: StarDist NMS + labels (GT maps)"):
        ratio("post: ours, Mask R-CNN (shipped params)", peer)
        ratio("post: ours, three-branch (GT maps)", peer)
    for name, why in failed.items():
        print(f"{name} could not run: {why}")


if __name__ == "__main__":
    main()
