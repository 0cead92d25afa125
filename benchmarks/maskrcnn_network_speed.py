"""Mask R-CNN network time on dense real nuclei mosaics, per stage and per inference setting, with labels checked.

Mosaics of 256 x 256 crops of the densest DSB2018 images (``_nuclei_mosaic.py``) run through
``maskrcnn-dsb2018`` (or ``--model``) under each setting, alternating settings within every round so that
load from other processes falls on all of them alike. Each setting's labels (the model's shipped
post-processing parameters) are compared with the mosaic's ground truth (mean object F1) and with the first
setting's ("before": float32, 512-pixel tiles, the per-tile limits the checkpoint was trained with, as before
session 12) by GlaS object F1. "now" runs the model as loaded: with its card's test-time proposal limits
(``test_time`` in the model card, see ``checkpoint.with_card_settings``).

``--stages`` also times the parts of one 512 x 512 tile: backbone, RPN, box head, mask head (float32 and
bfloat16).

Usage: python benchmarks/maskrcnn_network_speed.py --data ../shared/data/dsb2018/train [--size 1024]
       [--mosaics 3] [--rounds 2] [--threads 2] [--stages]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _nuclei_mosaic import nuclei_mosaic

from napari_instance_tuner.core.evaluation.metrics import object_f1
from napari_instance_tuner.core.families.maskrcnn import model as maskrcnn_model
from napari_instance_tuner.core.inference.stream_tile import inference_autocast
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.params import params_from_dict
from napari_instance_tuner.core.progress import run

#: name -> (float32 or bfloat16, network tile size or None for the model's, limits scaled with the tile's area,
#: the card's test-time limits (False: the trained ones))
SETTINGS = {
    "before (fp32, tile 512, fixed limits)": ("fp32", 512, False, False),
    "bf16 convolutions, trained limits": ("auto", None, True, False),
    "now: bf16 conv., card's limits": ("auto", None, True, True),
}


@contextlib.contextmanager
def trained_limits(loaded, trained: bool):
    """Run with the limits the checkpoint was trained with instead of its card's test-time ones."""
    saved = loaded.model.config
    if trained and loaded.meta.get("trained_test_time"):
        loaded.model.config = dataclasses.replace(saved, **loaded.meta["trained_test_time"])
    try:
        yield
    finally:
        loaded.model.config = saved


@contextlib.contextmanager
def fixed_limits(fixed: bool):
    """Turn the area scaling of the detection limits off (the behaviour before session 12)."""
    saved = maskrcnn_model.LIMITS_AREA
    maskrcnn_model.LIMITS_AREA = 1 << 40 if fixed else saved
    try:
        yield
    finally:
        maskrcnn_model.LIMITS_AREA = saved


def run_setting(loaded, image, setting):
    """(seconds, Maps) of one network pass over ``image`` with ``setting`` (see :data:`SETTINGS`)."""
    precision, tile, scaled, card = setting
    meta = dict(loaded.meta)
    if precision != "auto":
        meta["inference_amp"] = precision == "bf16"
    with fixed_limits(not scaled), trained_limits(loaded, not card):
        start = time.perf_counter()
        maps = run(loaded.family.predict_maps(loaded.model, image, meta, device="cpu", tile_size=tile))
        return time.perf_counter() - start, maps


def stage_times(loaded, tile: np.ndarray, amp: bool) -> dict[str, float]:
    """Seconds per part of one detection pass over ``tile`` (float32 (h, w, 3) at network scale), float32 or
    as the family runs it with ``inference_amp`` (bfloat16 parts of ``MIXED_PRECISION_PARTS``, channels_last)."""
    import torch

    from napari_instance_tuner.core.inference.cpu import AutocastFloat32

    layout = torch.channels_last if amp else torch.contiguous_format
    m = loaded.model.eval().to(memory_format=layout)
    heads = m.roi_heads
    x = torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1)))[None].contiguous(memory_format=layout)
    times: dict[str, float] = {}
    heads.score_thresh, heads.nms_thresh = maskrcnn_model.PERMISSIVE_SCORE, maskrcnn_model.PERMISSIVE_NMS
    swapped = []
    if amp:
        for owner_path, child in maskrcnn_model.MIXED_PRECISION_PARTS:
            owner = m.get_submodule(owner_path)
            swapped.append((owner, child, getattr(owner, child)))
            setattr(owner, child, AutocastFloat32(getattr(owner, child), lambda: inference_autocast("cpu", True)))

    def lap(name, start):
        times[name] = times.get(name, 0.0) + time.perf_counter() - start
        return time.perf_counter()

    try:
        with torch.no_grad():
            t = time.perf_counter()
            batch, _ = m.transform(list(x))
            features = m.backbone(batch.tensors)
            t = lap("backbone", t)
            proposals, _ = m.rpn(batch, features)
            t = lap("rpn", t)
            box = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes)))
            boxes, _, _ = heads.postprocess_detections(*box, proposals, batch.image_sizes)
            t = lap("box head", t)
            heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, boxes, batch.image_sizes)))
            lap("mask head", t)
    finally:
        for owner, child, module in swapped:
            setattr(owner, child, module)
    times["detections"] = float(len(boxes[0]))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="dsb2018 split folder (images/, labels/)")
    parser.add_argument("--model", default="maskrcnn-dsb2018")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--mosaics", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first mosaic (the others follow)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stages", action="store_true", help="also time the parts of one 512 x 512 tile")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    params = params_from_dict(loaded.family.Params, loaded.meta["postprocess"])
    mosaics = [nuclei_mosaic(args.data, args.size, args.seed + k, with_labels=True) for k in range(args.mosaics)]
    print(f"{args.model} on {args.mosaics} dense nuclei mosaics of {args.size}x{args.size}, {args.threads} threads; "
          f"shipped parameters {params}")
    if args.stages:
        from napari_instance_tuner.core.families.maskrcnn.network_input import network_input

        tile = network_input(mosaics[0][0], loaded.meta, loaded.model.config)[0][:512, :512]
        stages = {False: [], True: []}
        for k in range(6):  # alternating; the first pair warms up
            stage = stage_times(loaded, tile, bool(k % 2))
            if k >= 2:
                stages[bool(k % 2)].append(stage)
        for amp, runs in stages.items():
            stage = {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
            print(f"one 512x512 tile, {'now (bf16 parts, channels_last)' if amp else 'fp32'}, median of 2: "
                  + ", ".join(f"{k} {v:.3f}{'' if k == 'detections' else ' s'}" for k, v in stage.items()))
    warm = mosaics[0][0][:512, :512]
    for setting in SETTINGS.values():  # warm-up: oneDNN primitives, allocator
        run_setting(loaded, warm, setting)
    times = {name: [] for name in SETTINGS}
    f1s = {name: [] for name in SETTINGS}
    counts = {name: [] for name in SETTINGS}
    truth = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for image, gt in mosaics:
            reference = None
            for name, setting in SETTINGS.items():
                seconds, maps = run_setting(loaded, image, setting)
                times[name].append(seconds)
                labels = loaded.family.postprocess(maps, params).labels
                reference = labels if reference is None else reference
                f1s[name].append(object_f1(labels, reference)["f1"])
                counts[name].append(int(labels.max()))
                truth[name].append(object_f1(labels, gt)["f1"])
    base = np.median(times[next(iter(SETTINGS))])
    print(f"{'setting':<40}{'median s':>9}{'min s':>7}{'max s':>7}{'x before':>9}{'F1 min':>8}{'objects':>9}{'F1 vs GT':>9}")
    for name in SETTINGS:
        t = np.array(times[name])
        print(f"{name:<40}{np.median(t):>9.2f}{t.min():>7.2f}{t.max():>7.2f}{base / np.median(t):>9.2f}"
              f"{min(f1s[name]):>8.3f}{int(np.median(counts[name])):>9}{np.mean(truth[name]):>9.3f}")


if __name__ == "__main__":
    main()
