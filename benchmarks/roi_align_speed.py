"""Mask R-CNN on the CPU with torchvision's RoIAlign kernel against the sparse-product poolers, on real images.

Since session 29 the detector's box and mask poolers are
:class:`~napari_instance_tuner.core.families.maskrcnn.sparse_roi_align.SparseMultiScaleRoIAlign`. This script puts
torchvision's own ``MultiScaleRoIAlign`` back for the "torchvision" rows, on the same weights, and times, alternating
the two in every round so that load from other processes falls on both alike:

- **training step**: the family's own training step (forward, torchvision's losses, backward, an Adam step of
  1e-6 so the weights barely move) on batches from the family's own training crops (``DetectionBatches``: the
  model's crop and batch size, augmentation as in training), the same batches for both;
- **detection** (first, on the checkpoint's weights): ``predict_maps`` on whole images, with the detections of
  both compared (count and largest difference between their sorted scores).

    python benchmarks/roi_align_speed.py --model checkpoints/maskrcnn-glas-effl2.safetensors \
        --data ../shared/data/glas/train [--steps 6] [--images 4] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Mask R-CNN model name or checkpoint")
    parser.add_argument("--data", required=True, help="a split folder (images/, labels/)")
    parser.add_argument("--steps", type=int, default=6, help="training steps per setting and round")
    parser.add_argument("--images", type=int, default=4, help="whole images detected per setting and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from torchvision.ops import MultiScaleRoIAlign

    from napari_instance_tuner.core.families.maskrcnn.train import DetectionBatches, prepare_samples
    from napari_instance_tuner.core.io.checkpoint import load_model
    from napari_instance_tuner.core.progress import run
    from napari_instance_tuner.core.training.data import load_split

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    family, model, meta = loaded.family, loaded.model, loaded.meta
    if meta["family"] != "maskrcnn":
        raise SystemExit(f"{args.model} is a {meta['family']} model, not Mask R-CNN")
    heads = model.roi_heads
    poolers = {
        "sparse product": (heads.box_roi_pool, heads.mask_roi_pool),
        "torchvision": tuple(MultiScaleRoIAlign(p.featmap_names, p.output_size, p.sampling_ratio)
                             for p in (heads.box_roi_pool, heads.mask_roi_pool)),
    }
    samples = load_split(args.data)
    training = meta.get("training", {})
    batches = DetectionBatches(prepare_samples(samples, meta, model.config), crop=int(training.get("crop", 256)),
                               batch_size=int(training.get("batch_size", 4)))
    rng = np.random.default_rng(0)
    fixed = [batches(rng) for _ in range(args.steps)]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-6)
    step_times: dict[str, list[float]] = {k: [] for k in poolers}
    detect_times: dict[str, list[float]] = {k: [] for k in poolers}
    detections: dict[str, list] = {k: [] for k in poolers}
    model.eval()  # detection first, while the weights (and batch-norm statistics) are the checkpoint's for both
    for _ in range(args.rounds):
        for name, (box_pool, mask_pool) in poolers.items():
            heads.box_roi_pool, heads.mask_roi_pool = box_pool, mask_pool
            detections[name] = []
            for s in samples[: args.images]:
                start = time.perf_counter()
                with torch.no_grad():
                    maps = run(family.predict_maps(model, s.image, meta))
                detect_times[name].append(time.perf_counter() - start)
                detections[name].append(maps.extra)
    model.train().to(memory_format=torch.channels_last)  # as fit() trains on the CPU
    for _ in range(args.rounds):
        for name, (box_pool, mask_pool) in poolers.items():
            heads.box_roi_pool, heads.mask_roi_pool = box_pool, mask_pool
            for batch in fixed:
                start = time.perf_counter()
                loss, _ = family.training_step(model, batch)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                step_times[name].append(time.perf_counter() - start)
    crop, size = batches.crop, batches.batch_size
    print(f"{args.model}: {len(samples)} images in {args.data}; {args.rounds} rounds, {args.threads} threads")
    print(f"| poolers | training step, median s ({args.steps * args.rounds} steps, batch {size} x {crop} px) "
          f"| detection, median s ({args.images * args.rounds} whole images) |")
    print("|---|---|---|")
    for name in poolers:
        print(f"| {name} | {np.median(step_times[name]):.2f} | {np.median(detect_times[name]):.2f} |")
    for a, b, s in zip(detections["torchvision"], detections["sparse product"], samples):
        ta, tb = np.sort(np.asarray(a["scores"]))[::-1], np.sort(np.asarray(b["scores"]))[::-1]
        same = len(ta) == len(tb)
        diff = float(np.abs(ta - tb).max()) if same and len(ta) else 0.0
        print(f"{s.name}: {len(ta)} / {len(tb)} detections (torchvision / sparse), "
              f"largest score difference {diff:.1e}" if same else f"{s.name}: counts differ {len(ta)} / {len(tb)}")


if __name__ == "__main__":
    main()
