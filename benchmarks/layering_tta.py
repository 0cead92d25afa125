"""Can test-time augmentation help a layering model? Two ways of combining the 8 dihedral copies (issue 3).

Usage: python benchmarks/layering_tta.py --data ../shared/data/bbbc010/train [--model layering-bbbc010]

Runs the model on each of its validation images (the names in its metadata) rotated by 0, 90, 180 and 270
degrees, each with and without a left-right flip, and maps the outputs back. Plain averaging, as the
three-branch family's test-time flips do, is wrong here: a layer is a label without fixed meaning, and the
layers of the BBBC010 model largely encode an object's orientation, which a rotation changes. So:

- **align and average**: each copy's N layers are matched to the unrotated copy's by the Hungarian method
  on their correlation over the foreground (``scipy.optimize.linear_sum_assignment``), then averaged, and
  Algorithm 1 runs on the averaged maps (with the model's parameters, then auto-tuned on the same images);
- **instance voting**: Algorithm 1 runs on each copy on its own; an object is kept where a majority of the
  copies return a matching object (IoU > 0.5, the best match per copy), and its mask is the pixels that
  at least half of those objects cover. A pair of objects merged in a few copies but separate in most
  comes out separate.

Prints mean AP (IoU 0.5-0.9) and AJI per combination, as ``evaluate`` computes them (per image, averaged).
"""

from __future__ import annotations

import argparse

import numpy as np

from napari_instance_tuner.core.evaluation.autotune import autotune
from napari_instance_tuner.core.evaluation.metrics import aggregated_jaccard_index, average_precision
from napari_instance_tuner.core.families.layering.targets import object_masks
from napari_instance_tuner.core.family import Maps
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.training.data import load_split

#: Subsets of the copies (index k: rotation by 90 k % 4 degrees, then a left-right flip when k >= 4).
SUBSETS = {"none": [0], "rot180": [0, 2], "flips": [0, 4, 6, 2], "rot90s": [0, 1, 2, 3], "all 8": list(range(8))}


def dihedral_stacks(model, image: np.ndarray) -> list[np.ndarray]:
    """float32 (1 + N, H, W) foreground and layers of each of the 8 copies, mapped back to ``image``'s frame."""
    out = []
    for k in range(8):
        view = np.rot90(image, k % 4, axes=(0, 1))
        view = view[:, ::-1] if k >= 4 else view
        maps = run(model.family.predict_maps(model.model, np.ascontiguousarray(view), model.meta))
        stack = np.concatenate([maps.arrays["foreground"][None], maps.extra["layers"]])
        stack = stack[:, :, ::-1] if k >= 4 else stack
        out.append(np.ascontiguousarray(np.rot90(stack, -(k % 4), axes=(1, 2))).astype(np.float32))
    return out


def to_maps(stack: np.ndarray) -> Maps:
    """A (1 + N, H, W) stack as the layering family's maps."""
    arrays = {"foreground": stack[0], **{f"layer_{i + 1}": stack[i + 1] for i in range(len(stack) - 1)}}
    return Maps(arrays=arrays, extra={"layers": stack[1:]})


def align_and_average(stacks: list[np.ndarray]) -> np.ndarray:
    """The mean of ``stacks`` after permuting each one's layers to best match the first one's."""
    from scipy.optimize import linear_sum_assignment

    ref = stacks[0]
    foreground = ref[0] > 0.5
    total = ref.copy()
    for stack in stacks[1:]:
        _, order = linear_sum_assignment(-(ref[1:, foreground] @ stack[1:, foreground].T))
        total += np.concatenate([stack[:1], stack[1:][order]])
    return total / len(stacks)


def vote(instance_sets: list[np.ndarray], min_votes: int, iou_threshold: float = 0.5) -> np.ndarray:
    """Objects that ``min_votes`` of the bool (P_c, H, W) ``instance_sets`` agree on (IoU > ``iou_threshold``).

    Returns a bool (P, H, W) stack; each object's mask is the pixels at least half of its matches cover.
    """
    shape = instance_sets[0].shape[1:]
    copy_of = np.concatenate([np.full(len(s), c) for c, s in enumerate(instance_sets)])
    if len(copy_of) == 0:
        return np.zeros((0, *shape), bool)
    flat = np.concatenate([s.reshape(len(s), -1) for s in instance_sets]).astype(np.float32)
    inter = flat @ flat.T
    area = flat.sum(1)
    iou = inter / np.maximum(area[:, None] + area[None] - inter, 1)
    iou[copy_of[:, None] == copy_of[None]] = 0
    support = (iou > iou_threshold).sum(1)
    used = np.zeros(len(flat), bool)
    kept = []
    for i in np.argsort(-(support + 1e-3 * iou.sum(1)), kind="stable"):
        if used[i]:
            continue
        members = [i]
        for c in range(len(instance_sets)):
            cands = np.flatnonzero((copy_of == c) & ~used & (iou[i] > iou_threshold)) if c != copy_of[i] else []
            if len(cands):
                members.append(cands[np.argmax(iou[i, cands])])
        used[members if len(members) >= min_votes else [i]] = True
        if len(members) >= min_votes:
            kept.append((flat[members].mean(0) >= 0.5).reshape(shape))
    return np.array(kept, bool).reshape(-1, *shape)


def report(name: str, preds: list, truths: list) -> None:
    """Print mean AP, AP@0.5/0.8/0.9 and AJI averaged over images."""
    ap = [average_precision(p, g) for p, g in zip(preds, truths)]
    aji = np.mean([aggregated_jaccard_index(p, g) for p, g in zip(preds, truths)])
    cols = " ".join(f"{k} {np.mean([a[k] for a in ap]):.3f}" for k in ("mean_ap", "ap50", "ap80", "ap90"))
    print(f"{name:40s} {cols} aji {aji:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the training data folder the model was trained on")
    parser.add_argument("--model", default="layering-bbbc010")
    args = parser.parse_args()
    model = load_model(args.model)
    samples = load_split(args.data, names=model.meta["training"]["val_images"])
    truths = [np.asarray(object_masks(s), bool) for s in samples]
    params = model.family.default_params(model.meta)
    print(f"model {args.model}, parameters {params}, {len(samples)} validation images", flush=True)
    copies = [dihedral_stacks(model, s.image) for s in samples]
    post = [[np.asarray(model.family.postprocess(to_maps(c), params).masks, bool) for c in per] for per in copies]
    for name, subset in SUBSETS.items():
        maps = [to_maps(align_and_average([per[k] for k in subset])) for per in copies]
        report(f"align and average, {name}", [model.family.postprocess(m, params).masks for m in maps], truths)
        if len(subset) > 1:
            best, _, _ = run(autotune(model.family.postprocess, maps, [s.reference for s in samples], params,
                                      model.family.score))
            report(f"  the same, auto-tuned {best}", [model.family.postprocess(m, best).masks for m in maps], truths)
            votes = len(subset) // 2 + 1
            report(f"instance voting, {name}, {votes} votes", [vote([p[k] for k in subset], votes) for p in post],
                   truths)


if __name__ == "__main__":
    main()
