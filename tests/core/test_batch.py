"""Batch helpers: input expansion, recipe keys, the summary table, the sparse object file."""

from __future__ import annotations

import numpy as np
import pytest

from napari_instance_tuner.core.errors import InstanceTunerError
from napari_instance_tuner.core.inference.batch import (
    ImageReport,
    expand_inputs,
    recipe_key,
    summary_table,
    write_objects,
)
from napari_instance_tuner.core.inference.stitch import StitchedObject


def test_expand_inputs_files_folders_globs(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.png", "a/y.tif", "a/notes.txt", "a/deep/z.tiff"):
        (tmp_path / name).write_bytes(b"")
    got = expand_inputs([str(tmp_path / "a"), str(tmp_path / "a" / "**" / "*.tif*"), str(tmp_path / "a" / "x.png")])
    assert [p.name for p in got] == ["x.png", "y.tif", "z.tiff"]
    with pytest.raises(InstanceTunerError, match="no images"):
        expand_inputs([str(tmp_path / "nothing*.png")])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.tif").write_bytes(b"")
    with pytest.raises(InstanceTunerError, match="same outputs"):
        expand_inputs([str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.tif")])


def test_recipe_key_ignores_names_and_dates():
    base = {"weights": {"sha256": "ab", "path": "/x"}, "family": "three-branch", "postprocess": {"min_size": 3},
            "tiling": {"tile_size": 512}, "created": "today", "image": {"name": "a"}}
    moved = {**base, "weights": {"sha256": "ab", "path": "/elsewhere"}, "created": "later", "image": {"name": "b"}}
    assert recipe_key(base) == recipe_key(moved)
    assert recipe_key(base) != recipe_key({**base, "postprocess": {"min_size": 4}})
    assert recipe_key(base) != recipe_key({**base, "streaming": {"tile": 1024, "halo": 256, "amp": False}})


def test_summary_table_and_sparse_objects(tmp_path):
    table = summary_table([ImageReport("/d/a.tif", "done", (10, 20), 3, 1.5, ["a.tif"]),
                           ImageReport("/d/b.tif", "skipped", (5, 5), 1, 0.0, ["b.tif"]),
                           ImageReport("/d/c.tif", "failed", error="InputImageError: bad")])
    assert "a.tif" in table and "10x20" in table and "InputImageError: bad" in table
    assert table.splitlines()[-1].startswith("3 images: 1 done, 1 skipped (same recipe), 1 failed; 4 objects")
    mask = np.random.default_rng(0).random((5, 7)) > 0.5
    path = write_objects(tmp_path / "o.npz", [StitchedObject(4, (1, 2, 6, 9), mask, 0.5),
                                              StitchedObject(5, (0, 0, 1, 1), np.ones((1, 1), bool))])
    data = np.load(path)
    h, w = 5, 7
    got = np.unpackbits(data["bits"][data["offsets"][0] : data["offsets"][1]])[: h * w].reshape(h, w).astype(bool)
    assert np.array_equal(got, mask) and data["labels"].tolist() == [4, 5] and np.isnan(data["scores"][1])
