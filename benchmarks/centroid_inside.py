"""How often the paper's centroid (centre of the tight bounding box) falls outside its own object.

A centroid target outside the object teaches the centroid branch to fire on background or on a
neighbour, and post-processing step 5 then keeps or drops the wrong component. This counts, per grade,
the objects whose bbox centre is not inside them (the ``"inside"`` mode never is).

Usage: python benchmarks/centroid_inside.py --data ../shared/data/glas/train
"""

from __future__ import annotations

import argparse

import numpy as np

from napari_instance_tuner.core.families.three_branch.targets import centre_points
from napari_instance_tuner.core.training.data import load_split, read_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    args = parser.parse_args()
    groups = read_groups(args.data)
    counts: dict[str, list[int]] = {}
    for s in load_split(args.data):
        ids = np.unique(s.labels)
        ids = ids[ids > 0]
        pts = centre_points(s.labels, "bbox")
        outside = int(sum(s.labels[r, c] != i for (r, c), i in zip(pts, ids)))
        grade = groups.get(s.name, ("", "all"))[1] or "all"
        tally = counts.setdefault(grade, [0, 0])
        tally[0] += outside
        tally[1] += len(ids)
    print(f"{'grade':<12}{'objects':>9}{'bbox centre outside':>22}")
    total = [sum(v[0] for v in counts.values()), sum(v[1] for v in counts.values())]
    for grade, (outside, n) in sorted(counts.items()) + [("all", total)]:
        print(f"{grade:<12}{n:>9}{outside:>14} ({100 * outside / max(n, 1):.1f} %)")


if __name__ == "__main__":
    main()
