"""Per-object boxes and crops (core/sparse_masks.py): round trips, packing, memory, and every consumer against the
dense (N, H, W) path it replaces (Mask R-CNN and layering post-processing, metrics, exports)."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace

import numpy as np
import pytest

from napari_instance_tuner.core.evaluation import metrics
from napari_instance_tuner.core.evaluation.measure import measure_masks
from napari_instance_tuner.core.families.layering.postprocess import LayeringParams
from napari_instance_tuner.core.families.layering.postprocess import postprocess as layering_postprocess
from napari_instance_tuner.core.families.maskrcnn.postprocess import MaskRCNNParams, paste_mask, select
from napari_instance_tuner.core.families.maskrcnn.postprocess import postprocess as maskrcnn_postprocess
from napari_instance_tuner.core.families.maskrcnn.tiling import Detections
from napari_instance_tuner.core.family import Maps
from napari_instance_tuner.core.io.geojson import geojson_features
from napari_instance_tuner.core.io.mask_stack import read_mask_stack, write_mask_stack
from napari_instance_tuner.core.sparse_masks import SparseMasks


def disks(shape=(64, 80), n=12, seed=0) -> np.ndarray:
    """bool (n, H, W) random disks, many of them overlapping."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, 14)
        out.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
    return np.stack(out)


def dense_labels(masks: np.ndarray, winner: str) -> np.ndarray:
    labels = np.zeros(masks.shape[1:], np.uint32)
    order = range(len(masks)) if winner == "last" else range(len(masks) - 1, -1, -1)
    for k in order:
        labels[masks[k]] = k + 1
    return labels


# -- the representation ------------------------------------------------------------------------------------


def test_dense_round_trip_areas_union_and_labels():
    masks = disks()
    masks[3] = False  # an empty object stays an (empty) object
    objects = SparseMasks.from_dense(masks)
    assert len(objects) == len(masks) and objects.shape == masks.shape[1:]
    np.testing.assert_array_equal(objects.to_dense(), masks)
    np.testing.assert_array_equal(objects.areas(), masks.sum((1, 2)))
    np.testing.assert_array_equal(objects.union(), masks.any(0))
    for winner in ("last", "first"):
        np.testing.assert_array_equal(objects.to_labels(winner), dense_labels(masks, winner))
    obj, pix = objects.coords()
    ref_obj, ref_pix = np.nonzero(masks.reshape(len(masks), -1))
    np.testing.assert_array_equal(obj, ref_obj)
    np.testing.assert_array_equal(pix, ref_pix)
    picked = objects.select([5, 0])
    np.testing.assert_array_equal(picked.to_dense(), masks[[5, 0]])


def test_labels_round_trip_keeps_id_order_and_loose_boxes_are_allowed():
    labels = np.zeros((20, 30), np.uint16)
    labels[2:6, 3:9], labels[10:19, 20:29], labels[0, 29] = 7, 3, 12
    objects = SparseMasks.from_labels(labels)
    assert objects.boxes.tolist() == [[10, 20, 19, 29], [2, 3, 6, 9], [0, 29, 1, 30]]  # ids 3, 7, 12
    np.testing.assert_array_equal(objects.to_labels(), np.searchsorted([0, 3, 7, 12], labels))
    loose = SparseMasks.from_crops([(0, 0, np.pad(labels[2:6, 3:9] == 7, ((2, 0), (3, 0))))], labels.shape)
    np.testing.assert_array_equal(loose.to_dense()[0], labels == 7)
    with pytest.raises(ValueError, match="inside"):
        SparseMasks.from_crops([(15, 25, np.ones((8, 8), bool))], labels.shape)


def test_packing_never_puts_overlapping_objects_on_one_plane_and_reads_back():
    for seed in range(5):
        masks = disks(n=25, seed=seed)
        objects = SparseMasks.from_dense(masks)
        plane = objects.planes()
        shared = masks.reshape(len(masks), -1).astype(np.int64) @ masks.reshape(len(masks), -1).T.astype(np.int64)
        for i, j in zip(*np.nonzero(np.triu(shared, 1))):
            assert plane[i] != plane[j]
        assert plane.max() + 1 < len(masks)  # a few planes, not one per object
        i, j, count = objects.overlap_pairs()
        np.testing.assert_array_equal(count, shared[i, j])
        assert len(i) == np.count_nonzero(np.triu(shared, 1))
        planes = objects.to_planes(plane)
        assert planes.shape == (plane.max() + 1, *masks.shape[1:])
        np.testing.assert_array_equal(SparseMasks.from_labels(planes).to_dense(), masks)  # every object whole


def test_no_full_image_array_per_object():
    """2 000 small objects in a 4096² scene: boxes and crops only; no (N, H, W) array is ever allocated."""
    rng = np.random.default_rng(0)
    shape, n = (4096, 4096), 2000
    disk = np.add.outer((np.arange(12) - 5.5) ** 2, (np.arange(12) - 5.5) ** 2) <= 36
    corners = rng.integers(0, 4096 - 12, (n, 2))
    tracemalloc.start()
    objects = SparseMasks.from_crops([(int(y), int(x), disk) for y, x in corners], shape)
    labels = objects.to_labels()
    plane = objects.planes()
    areas = objects.areas()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert objects.nbytes < 2 * n * disk.size + 64 * n  # about the crops' area, not n * 4096²
    assert peak < 16 * shape[0] * shape[1]  # a few (H, W) images; one bool (N, H, W) stack would be 2 000x
    assert labels.shape == shape and labels.max() == n and (areas == disk.sum()).all()
    assert plane.max() < 10


# -- post-processing: the same results as the dense implementation it replaces ------------------------------


def old_maskrcnn_overlapping(maps: Maps, params: MaskRCNNParams):
    """The dense implementation this package shipped before boxes and crops (overlaps kept), for comparison."""
    shape, extra = tuple(maps.shape), maps.extra
    patches = []
    for i in select(extra, params.score_threshold, params.nms_iou):
        y0, x0, prob = paste_mask(extra["mask_probs"][i].astype(np.float32), extra["boxes"][i], shape)
        patch = prob >= params.mask_threshold
        if prob.size and np.count_nonzero(patch) >= max(params.min_size, 1):
            patches.append((i, y0, x0, patch))
    masks = np.zeros((len(patches), *shape), bool)
    labels = np.zeros(shape, np.uint32)
    for k, (_, y0, x0, patch) in enumerate(patches):
        masks[k, y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = patch
    for k in range(len(patches) - 1, -1, -1):
        _, y0, x0, patch = patches[k]
        labels[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]][patch] = k + 1
    return labels, masks, np.asarray(extra["scores"], np.float32)[[p[0] for p in patches]]


def crowded_detections(size=160, n=60, seed=0) -> Maps:
    """Cached detections of crowded, overlapping nuclei (some boxes cross the image edge)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-4, size + 4, (n, 2))
    radii = rng.uniform(4, 14, (n, 2))
    boxes = np.concatenate([centres[:, ::-1] - radii[:, ::-1], centres[:, ::-1] + radii[:, ::-1]], 1)
    g = (np.arange(28) + 0.5) / 14 - 1
    probs = np.clip(1.4 - (g[:, None] ** 2 + g[None, :] ** 2) + rng.normal(0, 0.1, (n, 28, 28)), 0, 1)
    det = Detections(boxes.astype(np.float32), rng.uniform(0.05, 1, n).astype(np.float32), np.ones(n, np.int32),
                     probs.astype(np.float16))
    return Maps({"score_map": np.zeros((size, size + 7), np.float32)}, det.to_extra())


@pytest.mark.parametrize("seed", [0, 1])
def test_maskrcnn_overlapping_results_equal_the_dense_implementation(seed):
    maps = crowded_detections(seed=seed)
    for params in (MaskRCNNParams(allow_overlaps=True, score_threshold=0.1, nms_iou=0.9, min_size=5),
                   MaskRCNNParams(allow_overlaps=True, score_threshold=0.4, nms_iou=0.5, mask_threshold=0.7)):
        new = maskrcnn_postprocess(maps, params)
        labels, masks, scores = old_maskrcnn_overlapping(maps, params)
        assert len(masks) > 10 and (masks.sum(0) > 1).any()  # crowded: the overlaps are exercised
        np.testing.assert_array_equal(new.labels, labels)
        np.testing.assert_array_equal(new.objects.to_dense(), masks)
        np.testing.assert_array_equal(new.scores, scores)


def test_layering_overlapping_results_equal_the_dense_implementation():
    """Objects in decreasing area; labels painted in that order (smaller objects win), as the dense code did."""
    masks = disks((70, 90), n=10, seed=3)
    layers = np.zeros((4, 70, 90), np.float32)
    for k, m in enumerate(masks):
        layers[k % 4][m] = np.maximum(layers[k % 4][m], 0.6 + 0.03 * k)
    arrays = {"foreground": masks.any(0).astype(np.float32) * 0.9}
    arrays.update({f"layer_{k + 1}": layers[k] for k in range(4)})
    inst = layering_postprocess(Maps(arrays), LayeringParams(threshold=0.5, min_size=5))
    dense = inst.objects.to_dense()
    areas = dense.sum((1, 2))
    assert (np.diff(areas) <= 0).all() and (dense.sum(0) > 1).any()
    np.testing.assert_array_equal(inst.labels, dense_labels(dense, "last"))
    flat = layering_postprocess(Maps(arrays), LayeringParams(threshold=0.5, min_size=5, allow_overlaps=False))
    assert not (flat.objects.to_dense().sum(0) > 1).any()


# -- consumers: metrics, measurements, GeoJSON, mask-stack files ------------------------------------------------


def test_metrics_on_boxes_and_crops_equal_the_dense_stack():
    pred, truth = disks(n=15, seed=1), disks(n=12, seed=2)
    pred[4] = False  # an empty object is padding, as in a stack
    sparse_pred, sparse_truth = SparseMasks.from_dense(pred), SparseMasks.from_dense(truth)
    truth_labels = dense_labels(truth, "last")
    for a, b, ref_a, ref_b in ((sparse_pred, sparse_truth, pred, truth), (sparse_pred, truth_labels, pred, truth_labels),
                               (truth_labels, sparse_pred, truth_labels, pred)):
        got, want = metrics.evaluate(a, b), metrics.evaluate(ref_a, ref_b)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], nan_ok=True), key
    np.testing.assert_array_equal(metrics.intersection_matrix(sparse_pred, sparse_truth).toarray(),
                                  metrics.intersection_matrix(pred, truth).toarray())
    np.testing.assert_array_equal(metrics.to_stack(sparse_pred), pred[pred.any((1, 2))])


def test_measurements_and_geojson_from_crops_equal_those_of_the_stack():
    masks = disks(n=8, seed=4)
    masks[:, 0, :5] = True  # objects touching the image edge
    image = np.random.default_rng(0).random(masks.shape[1:])
    objects = SparseMasks.from_dense(masks)
    want, got = measure_masks(masks, image), measure_masks(objects, image)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], err_msg=key)
    features = geojson_features(np.zeros(masks.shape[1:], np.uint32), got, objects)["features"]
    dense = geojson_features(np.zeros(masks.shape[1:], np.uint32), want, masks)["features"]
    assert [f["geometry"] for f in features] == [f["geometry"] for f in dense] and len(features) == len(masks)


@pytest.mark.parametrize("suffix", [".npz", ".tif"])
def test_mask_stack_files_hold_packed_planes_and_old_files_still_read(tmp_path, suffix):
    masks = disks(n=10, seed=5)
    objects = SparseMasks.from_dense(masks)
    path = write_mask_stack(tmp_path / f"m{suffix}", objects, scores=np.linspace(0, 1, 10) if suffix == ".npz" else None,
                            ids=np.arange(11, 21))
    read, ids, scores = read_mask_stack(path)
    np.testing.assert_array_equal(read.to_dense(), masks)
    assert ids.tolist() == list(range(11, 21))
    if suffix == ".npz":
        with np.load(path) as npz:
            assert npz["planes"].shape[0] == objects.planes().max() + 1 < len(masks)
        np.testing.assert_allclose(scores, np.linspace(0, 1, 10), rtol=1e-6)
    old = tmp_path / f"old{suffix}"  # version 1: a bool stack / one 0-255 page per object
    if suffix == ".npz":
        np.savez_compressed(old, masks=masks, labels=np.arange(1, 11, dtype=np.uint32))
    else:
        import tifffile

        tifffile.imwrite(old, masks.astype(np.uint8) * 255, metadata={"axes": "QYX"})
    np.testing.assert_array_equal(read_mask_stack(old)[0].to_dense(), masks)


def test_training_data_read_the_packed_planes_predict_writes(tmp_path):
    import tifffile

    from napari_instance_tuner.core.training.data import load_split

    masks = disks((32, 40), n=6, seed=6)
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", np.zeros((32, 40), np.uint16))
    tifffile.imwrite(tmp_path / "labels" / "a.tif", dense_labels(masks, "last").astype(np.uint16))
    write_mask_stack(tmp_path / "labels" / "a_instances.npz", SparseMasks.from_dense(masks))
    (sample,) = load_split(tmp_path)
    np.testing.assert_array_equal(sample.masks, masks)


def test_maskrcnn_mostly_inside_keeps_boxes_and_crops():
    from napari_instance_tuner.core.training.finetune import mostly_inside

    masks = disks(n=8, seed=7)
    inside = np.zeros(masks.shape[1:], bool)
    inside[:, :40] = True
    want = mostly_inside(masks, inside)
    got = mostly_inside(SparseMasks.from_dense(masks), inside)
    np.testing.assert_array_equal(got.to_dense(), want)
    assert 0 < len(got) < len(masks)


def test_crowded_maskrcnn_postprocess_replaced_instances_masks_is_only_a_dense_view():
    inst = maskrcnn_postprocess(crowded_detections(), replace(MaskRCNNParams(), allow_overlaps=True, score_threshold=0.1))
    np.testing.assert_array_equal(inst.masks, inst.objects.to_dense())  # compatibility property
    assert inst.count == len(inst.objects)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_over_touching_pairs_keeps_what_torchvision_keeps_in_its_order(seed):
    """Many one-class boxes (torchvision's CPU path for > 1 000 boxes), with duplicates and tied scores."""
    import torch
    from torchvision.ops import batched_nms

    rng = np.random.default_rng(seed)
    n = 1500
    centres, radii = rng.uniform(0, 600, (n, 2)), rng.uniform(2, 12, (n, 2))
    boxes = np.concatenate([centres - radii, centres + radii], 1).astype(np.float32)
    boxes[: n // 3] = boxes[n // 3 : 2 * (n // 3)] + rng.normal(0, 1, (n // 3, 4)).astype(np.float32)
    scores = np.round(rng.random(n), 2).astype(np.float32)  # ties
    extra = {"boxes": boxes, "scores": scores, "classes": np.ones(n, np.int32)}
    for threshold, iou in ((0.05, 0.3), (0.3, 0.6), (0.5, 0.9)):
        candidates = np.flatnonzero(scores >= threshold)
        want = candidates[batched_nms(torch.from_numpy(boxes[candidates]), torch.from_numpy(scores[candidates]),
                                      torch.ones(candidates.size, dtype=torch.int64), iou).numpy()]
        np.testing.assert_array_equal(select(extra, threshold, iou), want)
