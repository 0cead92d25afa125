"""Why does a layering model miss objects? Layer use, and each missed object's cause (issue 3).

Usage: python benchmarks/layering_diagnostics.py --data ../shared/data/bbbc010/train [--model layering-bbbc010]

Runs the model on its own validation images (the names in its metadata; ``--all`` for every image of
``--data``) with its post-processing parameters and prints, per image:

- the share of the ground-truth foreground whose arg-max layer is each of the N layers, and how many layers
  hold at least 1 % of it ("layers used");
- how many layers suffice for the image: a greedy colouring of its adjacency graph (objects closer than the
  paper's adjacency distance t = 15 px must lie in different layers), an upper bound of the fewest needed;
- how many adjacent pairs of objects share their arg-max layer (Algorithm 1 can only return such a pair as
  one object where they touch);
- every ground-truth object not matched at IoU 0.5, with its cause: "merged" (the prediction that covers
  most of it also covers > 30 % of another object), "split" (several predictions cover > 10 % of it each),
  "foreground" (less than 60 % of it is foreground at tau), else "other".

With ``--orientation`` it also runs the model on the image rotated by 90 degrees and flipped up-down and
left-right, maps the layers back, and counts the objects whose layer (the arg-max layer of most of their
overlap-free pixels) changes: a model whose layers encode the orientation of an object (the paper's
figure 5) changes many, and then a fixed per-object target layer (``--target-layers fixed``) conflicts with
rotated training crops.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from napari_instance_tuner.core.evaluation.metrics import intersection_matrix
from napari_instance_tuner.core.families.layering.postprocess import layer_stack
from napari_instance_tuner.core.families.layering.targets import ADJACENCY_DISTANCE, adjacency, object_masks
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.training.data import load_split


def greedy_colours(adj: np.ndarray) -> int:
    """Layers a greedy colouring of the adjacency graph uses (largest degree first; an upper bound of the fewest).

    0 without objects.
    """
    layer_of: dict[int, int] = {}
    for i in np.argsort(-adj.sum(1), kind="stable"):
        used = {layer_of[j] for j in np.flatnonzero(adj[i]) if j in layer_of}
        layer_of[int(i)] = next(k for k in range(len(adj) + 1) if k not in used)
    return max(layer_of.values()) + 1 if layer_of else 0


def miss_causes(pred: np.ndarray, truth: np.ndarray, foreground: np.ndarray) -> list[tuple[int, float, str]]:
    """(object index, best IoU, cause) for each ground-truth object not matched at IoU 0.5.

    Parameters
    ----------
    pred, truth : np.ndarray
        bool (P, H, W) and (G, H, W) instance stacks.
    foreground : np.ndarray
        bool (H, W): the thresholded foreground map.
    """
    areas_p, areas_g = pred.sum(axis=(1, 2)).astype(float), truth.sum(axis=(1, 2)).astype(float)
    inter = intersection_matrix(pred, truth).toarray() if len(pred) else np.zeros((0, len(truth)))
    iou = inter / np.maximum(areas_p[:, None] + areas_g[None] - inter, 1)
    out = []
    for j in range(len(truth)):
        best = float(iou[:, j].max()) if len(pred) else 0.0
        if best >= 0.5:
            continue
        cover = inter[:, j] / max(areas_g[j], 1)
        if foreground[truth[j]].mean() < 0.6:
            cause = "foreground"
        elif len(pred) and ((inter[int(cover.argmax())] / np.maximum(areas_g, 1)) > 0.3).sum() > 1:
            cause = "merged"
        elif (cover > 0.1).sum() > 1:
            cause = "split"
        else:
            cause = "other"
        out.append((j, best, cause))
    return out


#: Image transforms (H, W[, C] arrays) and the inverse for (N, H, W) layer stacks.
TRANSFORMS = {
    "rot90": (lambda a: np.rot90(a, 1, axes=(0, 1)), lambda a: np.rot90(a, -1, axes=(1, 2))),
    "flip-ud": (lambda a: a[::-1], lambda a: a[:, ::-1]),
    "flip-lr": (lambda a: a[:, ::-1], lambda a: a[:, :, ::-1]),
}


def object_layers(layers: np.ndarray, free: np.ndarray) -> list[int]:
    """Each object's layer: the arg-max layer of most of its overlap-free pixels (-1 without any).

    Parameters
    ----------
    layers : np.ndarray
        float (N, H, W) layer maps.
    free : np.ndarray
        bool (K, H, W) overlap-free parts of the objects.
    """
    best = layers.argmax(0)
    return [int(np.bincount(best[m], minlength=len(layers)).argmax()) if m.any() else -1 for m in free]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="layering-bbbc010")
    parser.add_argument("--data", required=True, help="the split the model was trained on (or any split with --all)")
    parser.add_argument("--all", action="store_true", help="every image of --data, not the validation images")
    parser.add_argument("--orientation", action="store_true",
                        help="also count objects whose layer changes when the image is rotated or flipped")
    args = parser.parse_args()
    loaded = load_model(args.model)
    meta = loaded.meta
    params = loaded.family.default_params(meta)
    names = None if args.all else list(meta.get("training", {}).get("val_images", []))
    samples = load_split(args.data, names)
    print(f"model {loaded.name}, parameters {params}, {len(samples)} images, adjacency t = {ADJACENCY_DISTANCE:g} px")
    causes: Counter = Counter()
    shares_all, total, same_layer_pairs, pairs = [], 0, 0, 0
    changed: Counter = Counter()
    for s in samples:
        maps = run(loaded.family.predict_maps(loaded.model, s.image, meta))
        layers = layer_stack(maps)
        inst = loaded.family.postprocess(maps, params)
        truth = object_masks(s)
        fg_truth = truth.any(0)
        best = layers.argmax(0)[fg_truth]
        share = np.bincount(best, minlength=len(layers)) / max(best.size, 1)
        shares_all.append(share * best.size)
        adj = adjacency(truth, ADJACENCY_DISTANCE)  # the paper's t, in pixels of the data
        free = truth & (truth.sum(0) == 1)[None]
        layer_of = object_layers(layers, free)
        if args.orientation:
            for name, (forward, back) in TRANSFORMS.items():
                moved = run(loaded.family.predict_maps(loaded.model, np.ascontiguousarray(forward(s.image)), meta))
                other = object_layers(np.ascontiguousarray(back(layer_stack(moved))), free)
                changed[name] += sum(a != b for a, b in zip(layer_of, other) if a >= 0)
        iu = np.argwhere(np.triu(adj))
        same = sum(layer_of[a] == layer_of[b] >= 0 for a, b in iu)
        same_layer_pairs += same
        pairs += len(iu)
        misses = miss_causes(inst.masks, truth, maps.arrays["foreground"] > params.threshold)
        causes.update(c for _, _, c in misses)
        total += len(truth)
        print(f"{s.name}: {len(truth)} objects, {inst.count} predicted; layers used {(share >= 0.01).sum()} "
              f"(a colouring with {greedy_colours(adj)} suffices); adjacent pairs in one layer {same}/{len(iu)}; "
              f"missed {len(misses)}: " + ", ".join(f"#{j} {c} (IoU {b:.2f})" for j, b, c in misses))
    share = np.sum(shares_all, 0) / max(np.sum(shares_all), 1)
    print("foreground share per layer (arg-max): " + " ".join(f"{v:.3f}" for v in share))
    print(f"adjacent pairs sharing a layer: {same_layer_pairs} of {pairs}")
    if args.orientation:
        print(f"objects whose layer changes (of {total}): "
              + ", ".join(f"{k} {v} ({v / max(total, 1):.0%})" for k, v in changed.items()))
    missed = sum(causes.values())
    print(f"missed {missed} of {total} objects at IoU 0.5: " + ", ".join(f"{k} {v}" for k, v in causes.most_common()))


if __name__ == "__main__":
    main()
