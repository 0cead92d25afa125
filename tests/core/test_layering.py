"""Layering family: the loss terms (equations 2-6), adjacency, Algorithm 1, batches, prediction, training."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_instance_tuner.core.families.layering import loss as L
from napari_instance_tuner.core.families.layering.postprocess import LayeringParams, postprocess
from napari_instance_tuner.core.families.layering.targets import adjacency
from napari_instance_tuner.core.families.layering.train import BatchMaker, prepare_samples
from napari_instance_tuner.core.family import Maps

N = 4


def _emb(vectors: list[list[float]], size: int = 4) -> torch.Tensor:
    """(1, N, size, size * len(vectors)) embeddings: one constant block per vector."""
    blocks = [torch.tensor(v, dtype=torch.float32)[:, None, None].expand(N, size, size) for v in vectors]
    return torch.cat(blocks, dim=2)[None]


def _members(k: int, size: int = 4) -> torch.Tensor:
    """bool (1, k, size, size * k): object i is block i."""
    m = torch.zeros(1, k, size, size * k, dtype=torch.bool)
    for i in range(k):
        m[0, i, :, i * size : (i + 1) * size] = True
    return m


def test_repulsion_is_zero_for_orthogonal_means_and_one_for_identical_ones():
    adj = torch.tensor([[[False, True], [True, False]]])
    present = torch.ones(1, 2, dtype=torch.bool)
    orthogonal = torch.tensor([[[1.0, 0, 0, 0], [0, 0.7, 0, 0]]])
    identical = torch.tensor([[[0.3, 0.6, 0, 0], [0.3, 0.6, 0, 0]]])
    assert L.repulsion_loss(orthogonal, adj, present).item() == pytest.approx(0.0, abs=1e-6)
    assert L.repulsion_loss(identical, adj, present).item() == pytest.approx(1.0, abs=1e-5)
    # Identical but not adjacent: nothing to push apart.
    assert L.repulsion_loss(identical, ~adj & adj, present).item() == pytest.approx(0.0, abs=1e-6)
    # Cosine similarity 0.5 between the means -> D^2 = 0.25 for both objects.
    half = torch.tensor([[[1.0, 0, 0, 0], [0.5, np.sqrt(0.75), 0, 0]]], dtype=torch.float32)
    assert L.repulsion_loss(half, adj, present).item() == pytest.approx(0.25, abs=1e-5)


def test_sparsity_is_zero_for_one_hot_embeddings_and_known_for_uniform_ones():
    free = torch.ones(1, 4, 8, dtype=torch.bool)
    one_hot = _emb([[0, 0.9, 0, 0], [0.4, 0, 0, 0]])
    uniform = _emb([[0.5] * N, [0.2] * N])
    assert L.sparsity_loss(one_hot, free).item() == pytest.approx(0.0, abs=1e-5)
    assert L.sparsity_loss(uniform, free).item() == pytest.approx(1 - 1 / np.sqrt(N), abs=1e-5)


def test_attraction_is_zero_for_constant_objects_and_half_for_split_ones():
    members = _members(2)
    constant = _emb([[0.2, 0.5, 0.1, 0], [0.9, 0, 0, 0.3]])
    assert L.attraction_loss(constant, members).item() == pytest.approx(0.0, abs=1e-5)
    # Object 1 half in layer 0, half in layer 1: u ~ (1, 1)/sqrt 2, D(e_p, u)^2 = 1/2 on its pixels.
    split = constant.clone()
    split[0, :, :2, :4] = torch.tensor([1.0, 0, 0, 0])[:, None, None]
    split[0, :, 2:, :4] = torch.tensor([0, 1.0, 0, 0])[:, None, None]
    assert L.attraction_loss(split, members).item() == pytest.approx(0.25, abs=1e-5)  # half the pixels


def test_overlap_loss_is_zero_for_a_perfect_layered_prediction_and_one_for_none():
    stack = torch.zeros(1, N, 6, 6)
    stack[0, 0, :, :4] = 1
    stack[0, 1, :, 2:] = 1  # columns 2-3: both layers (an overlap)
    weight = stack.sum(1)
    assert L.overlap_loss(stack.clone(), stack, weight).item() == pytest.approx(0.0, abs=1e-6)
    assert L.overlap_loss(torch.zeros_like(stack), stack, weight).item() == pytest.approx(1.0, abs=1e-6)


def test_target_stack_puts_each_whole_object_into_the_layer_of_its_overlap_free_part():
    objects = torch.zeros(1, 2, 4, 6, dtype=torch.bool)
    objects[0, 0, :, :4] = True
    objects[0, 1, :, 2:] = True
    u = torch.tensor([[[0.1, 0.2, 0.9, 0.0], [0.8, 0.1, 0.0, 0.0]]])
    s = L.target_stack(objects, u, torch.ones(1, 2, dtype=torch.bool))
    assert torch.equal(s[0, 2].bool(), objects[0, 0]) and torch.equal(s[0, 0].bool(), objects[0, 1])
    assert s[0, 1].sum() == 0 and s[0, 3].sum() == 0
    assert torch.equal(s.sum(1)[0], objects.sum(1)[0].float())  # overlap pixels are in two layers


def test_layer_assignment_keeps_adjacent_objects_apart_and_leaves_the_rest_at_their_arg_max():
    # Objects 0, 1, 2 touch one another (a triangle); 3 is far away. All four live in layer 1.
    u = torch.tensor([[[0.0, 0.9, 0.1, 0.0], [0.0, 0.8, 0.0, 0.3], [0.0, 0.7, 0.0, 0.0], [0.0, 0.9, 0.0, 0.0]]])
    adj = torch.tensor([[[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]], dtype=torch.bool)
    present = torch.ones(1, 4, dtype=torch.bool)
    assert L.layer_assignment(u, present).tolist() == [[1, 1, 1, 1]]  # the paper's arg-max
    # Object 2 lives most clearly in layer 1 (u is one-hot there) and keeps it; 0 moves to its next
    # best layer 2, 1 to its next best free one, 3; the far object 3 keeps layer 1.
    assert L.layer_assignment(u, present, adj).tolist() == [[2, 3, 1, 1]]
    # An absent object holds no layer: with object 2 absent, 0 and 1 only need to differ from each other.
    present[0, 2] = False
    layers = L.layer_assignment(u, present, adj)[0].tolist()
    assert layers[0] != layers[1] and 1 in layers[:2] and layers[3] == 1


def test_separated_target_stack_gives_touching_objects_of_one_layer_different_layers():
    objects = torch.zeros(1, 2, 4, 8, dtype=torch.bool)
    objects[0, 0, :, :4] = True
    objects[0, 1, :, 4:] = True  # touches object 0
    u = torch.tensor([[[0.0, 1.0, 0.0, 0.0], [0.0, 0.9, 0.2, 0.0]]])
    adj = torch.tensor([[[0, 1], [1, 0]]], dtype=torch.bool)
    present = torch.ones(1, 2, dtype=torch.bool)
    plain = L.target_stack(objects, u, present)
    assert plain[0, 1].sum() == 32 and plain[0, 2].sum() == 0  # both in layer 1: one object to Algorithm 1
    s = L.target_stack(objects, u, present, adj)
    assert torch.equal(s[0, 1].bool(), objects[0, 0]) and torch.equal(s[0, 2].bool(), objects[0, 1])
    # The loss: a prediction that merges the two objects in layer 1 (object 1 a little in layer 2 too).
    logits = torch.full((1, 1 + N, 4, 8), -12.0)
    logits[0, 0] = 12.0
    logits[0, 2] = 12.0  # layer 1 on both objects
    logits[0, 3][objects[0, 1]] = 0.0  # layer 2 at 0.5 on object 1
    logits.requires_grad_(True)
    targets = L.LayeringTargets(objects, adj)
    valid = torch.ones(1, 1, 4, 8)
    _, paper = L.LayeringLoss(phase=2, separate_targets=False)(logits, targets, valid)
    assert L.LayeringLoss(phase=2).separate_targets is False  # the paper's S is the default
    loss, separated = L.LayeringLoss(phase=2, separate_targets=True)(logits, targets, valid)
    assert separated["overlap"] > 0.3 and paper["overlap"] < 0.2  # the paper's S accepts the merge
    loss.backward()
    # Descending the separated loss raises layer 2 and lowers layer 1 on object 1.
    assert (logits.grad[0, 3][objects[0, 1]] < 0).all() and (logits.grad[0, 2][objects[0, 1]] > 0).all()


def test_layer_cross_entropy_raises_a_saturated_target_layer_where_the_overlap_loss_cannot():
    objects = torch.zeros(1, 2, 4, 8, dtype=torch.bool)
    objects[0, 0, :, :4] = True
    objects[0, 1, :, 4:] = True  # touches object 0
    adj = torch.tensor([[[0, 1], [1, 0]]], dtype=torch.bool)
    # Both objects in layer 1; object 1 a little more in layer 2 than elsewhere, but saturated there (1e-7).
    logits = torch.full((1, 1 + N, 4, 8), -20.0)
    logits[0, 0] = 12.0
    logits[0, 2] = 12.0
    logits[0, 3][objects[0, 1]] = -16.0
    targets = L.LayeringTargets(objects, adj)
    valid = torch.ones(1, 1, 4, 8)
    grads = {}
    for weight in (0.0, 1.0):
        x = logits.clone().requires_grad_(True)
        loss, parts = L.LayeringLoss(phase=2, separate_targets=True, layer_bce_weight=weight)(x, targets, valid)
        loss.backward()
        grads[weight] = x.grad[0, 3][objects[0, 1]]
        assert ("layer_bce" in parts) == (weight > 0)
    assert L.LayeringLoss(phase=2).layer_bce_weight == 0.0  # the paper's loss by default
    assert grads[0.0].abs().max() < 1e-6  # L_overlap's push into the saturated layer vanishes
    assert (grads[1.0] < -1e-3).all()  # the cross-entropy's does not: descending raises layer 2 on object 1
    # Its value: on the 32 foreground pixels, layer 1 right on object 0; on object 1, layer 1 (target 0) at
    # logit 12 and layer 2 (target 1) at -16 dominate: (softplus(12) + softplus(16)) / 2 over the image.
    stack = L.target_stack(objects, torch.tensor([[[0.0, 1.0, 0.0, 0.0],
                                                   [0.0, 0.9, 0.2, 0.0]]]),
                           torch.ones(1, 2, dtype=torch.bool), adj)
    value = float(L.layer_cross_entropy(logits[:, 1:], stack, objects.any(1)))
    expected = (float(torch.nn.functional.softplus(torch.tensor(12.0)) + torch.nn.functional.softplus(
        torch.tensor(16.0))) / 2)
    assert abs(value - expected) < 0.01


def test_full_loss_is_near_its_minimum_for_perfect_logits():
    objects = torch.zeros(1, 3, 16, 16, dtype=torch.bool)
    objects[0, 0, 2:6, 1:12] = True
    objects[0, 1, 1:14, 8:11] = True  # crosses object 0
    objects[0, 2, 10:14, 1:5] = True  # far from object 0, near object 1
    adj = torch.tensor([[[0, 1, 0], [1, 0, 1], [0, 1, 0]]], dtype=torch.bool)
    layer_of = [0, 1, 0]
    logits = torch.full((1, 1 + N, 16, 16), -12.0)
    logits[0, 0][objects[0].any(0)] = 12.0
    for k, layer in enumerate(layer_of):
        logits[0, 1 + layer][objects[0, k]] = 12.0
    targets = L.LayeringTargets(objects, adj)
    valid = torch.ones(1, 1, 16, 16)
    loss, parts = L.LayeringLoss(phase=2)(logits, targets, valid)
    assert loss.item() < 1e-3
    assert set(parts) == {"foreground", "attr", "rep", "sparse", "overlap"}
    # Putting the adjacent objects 1 and 2 into the same layer is penalised by L_rep.
    logits[0, 1 + 1][objects[0, 2]] = 12.0
    logits[0, 1 + 0][objects[0, 2]] = -12.0
    _, worse = L.LayeringLoss(phase=1)(logits, targets, valid)
    assert worse["rep"] > 0.3 and "overlap" not in worse


def test_adjacency_uses_the_shortest_distance_between_objects():
    masks = np.zeros((4, 40, 80), bool)
    masks[0, 10:20, 5:15] = True
    masks[1, 10:20, 25:35] = True  # 10 px gap to object 0
    masks[2, 10:20, 55:65] = True  # 20 px gap to object 1
    masks[3, 15:30, 60:70] = True  # overlaps object 2
    adj = adjacency(masks, 15.0)
    assert adj[0, 1] and adj[1, 0] and adj[2, 3]
    assert not adj[1, 2] and not adj[0, 2] and not adj.diagonal().any()
    assert not adjacency(masks, 9.0)[0, 1]


def _crossing_maps(h: int = 40, w: int = 40) -> tuple[Maps, np.ndarray, np.ndarray]:
    bar_h = np.zeros((h, w), bool)
    bar_h[18:23, 2:38] = True
    bar_v = np.zeros((h, w), bool)
    bar_v[2:38, 18:23] = True
    layers = np.full((N, h, w), 0.05, np.float32)
    layers[0][bar_h] = 0.9
    layers[1][bar_v] = 0.8  # weaker than layer 0 at the crossing: arg-max alone gives it to layer 0
    fg = (bar_h | bar_v).astype(np.float32) * 0.95
    arrays = {"foreground": fg, **{f"layer_{k + 1}": layers[k] for k in range(N)}}
    return Maps(arrays=arrays), bar_h, bar_v


def test_algorithm_1_keeps_crossing_objects_whole_and_overlapping():
    maps, bar_h, bar_v = _crossing_maps()
    inst = postprocess(maps, LayeringParams(threshold=0.5, min_size=10, allow_overlaps=True))
    assert inst.count == 2 and inst.masks.dtype == bool and inst.labels.dtype == np.uint32
    assert any(np.array_equal(m, bar_h) for m in inst.masks) and any(np.array_equal(m, bar_v) for m in inst.masks)
    assert (inst.masks[0] & inst.masks[1]).sum() == (bar_h & bar_v).sum() == 25
    assert set(np.unique(inst.labels)) == {0, 1, 2} and inst.scores.shape == (2,)


def test_algorithm_1_without_overlaps_cuts_the_weaker_object_at_the_crossing():
    maps, bar_h, bar_v = _crossing_maps()
    inst = postprocess(maps, LayeringParams(threshold=0.5, min_size=10, allow_overlaps=False))
    assert inst.count == 3  # the vertical bar loses the crossing to layer 0 and falls into two halves
    assert not (inst.masks.sum(0) > 1).any()
    assert np.array_equal(inst.masks.any(0), bar_h | bar_v)


def test_algorithm_1_min_size_and_threshold():
    maps, _, _ = _crossing_maps()
    assert postprocess(maps, LayeringParams(0.5, min_size=10_000, allow_overlaps=True)).count == 0
    assert postprocess(maps, LayeringParams(0.99, min_size=0, allow_overlaps=True)).count == 0
    maps.arrays["foreground"][0:3, 0:3] = 0.9  # a 9-pixel speck
    assert postprocess(maps, LayeringParams(0.5, min_size=10, allow_overlaps=True)).count == 2
    assert postprocess(maps, LayeringParams(0.5, min_size=5, allow_overlaps=True)).count == 3


def test_fill_gaps_gives_dropped_layer_fragments_to_the_nearest_object_within_the_distance():
    maps, bar_h, bar_v = _crossing_maps()
    fragment = np.zeros_like(bar_h)
    fragment[18:23, 30:32] = True  # 10 pixels of the horizontal bar flip to layer 3: below S_min
    maps.arrays["layer_3"][fragment] = 0.99
    maps.arrays["layer_1"][fragment] = 0.3
    params = LayeringParams(0.5, min_size=20, allow_overlaps=True)
    published = postprocess(maps, params)
    assert published.count == 3  # the bar falls into two pieces around the dropped fragment, plus bar_v
    assert not published.masks.any(0)[fragment].any()
    filled = postprocess(maps, replace(params, fill_gaps=3))
    assert filled.count == 3 and np.array_equal(filled.masks.any(0), bar_h | bar_v)
    left = next(m for m in filled.masks if m[20, 5])
    right = next(m for m in filled.masks if m[20, 36])
    # each fragment pixel joins the nearer piece: column 30 the left one, column 31 the right one
    assert left[18:23, 30].all() and not left[18:23, 31].any() and right[18:23, 31].all() and not right[:, 30].any()
    assert not (left & ~bar_h).any() and not (right & ~bar_h).any()
    assert np.array_equal(filled.scores, published.scores)
    too_far = postprocess(maps, replace(params, fill_gaps=0.5))
    assert not too_far.masks.any(0)[fragment].any()


def test_algorithm_1_on_empty_maps():
    maps = Maps(arrays={"foreground": np.zeros((8, 9), np.float32),
                        **{f"layer_{k + 1}": np.zeros((8, 9), np.float32) for k in range(N)}})
    inst = postprocess(maps, LayeringParams())
    assert inst.count == 0 and inst.masks.shape == (0, 8, 9) and inst.labels.shape == (8, 9)


def test_batches_carry_exact_masks_and_the_adjacency_of_the_objects_in_the_crop():
    from napari_instance_tuner.core.synthetic import synthetic_worms
    from napari_instance_tuner.core.training.data import Sample

    image, labels, masks = synthetic_worms((96, 96), seed=3)
    prepared = prepare_samples([Sample("w", image, labels, masks)], 1, 1.0)
    assert prepared[0].masks.shape == masks.shape and prepared[0].adjacency.shape == (len(masks),) * 2
    x, targets, valid = BatchMaker(prepared, crop=64, batch_size=3)(np.random.default_rng(0))
    assert x.shape == (3, 1, 64, 64) and valid.shape == (3, 1, 64, 64)
    assert targets.objects.dtype == torch.bool and targets.objects.shape[:2] == targets.adjacency.shape[:2]
    assert torch.equal(targets.adjacency, targets.adjacency.transpose(1, 2))
    # The objects present in a crop come first; the padding after them is empty and adjacent to nothing.
    present = targets.objects.any(dim=(2, 3))
    assert present.any()
    for b in range(3):
        k = int(present[b].sum())
        assert present[b, :k].all() and not present[b, k:].any()
        assert not targets.adjacency[b, k:].any() and not targets.adjacency[b, :, k:].any()


def test_predict_maps_returns_foreground_and_n_layers_at_the_image_size(tmp_path, tiny_loaded):
    from napari_instance_tuner.core.progress import run

    loaded = tiny_loaded("layering", tmp_path)
    image = np.random.default_rng(0).integers(0, 255, (37, 51, 3), dtype=np.uint8)
    maps = run(loaded.family.predict_maps(loaded.model, image, loaded.meta, device="cpu"))
    n = loaded.model.config.n_layers
    assert set(maps.arrays) == {"foreground", *(f"layer_{k + 1}" for k in range(n))}
    assert all(a.shape == (37, 51) and a.dtype == np.float32 for a in maps.arrays.values())
    assert maps.extra["layers"].shape == (n, 37, 51)
    inst = loaded.family.postprocess(maps, LayeringParams(threshold=0.3, min_size=0))
    assert inst.masks.shape[1:] == (37, 51) and inst.labels.max() == inst.count


def _algorithm_1_reference(fg: np.ndarray, layers: np.ndarray, tau: float, s_min: int, overlaps: bool) -> set:
    """Algorithm 1 written literally on the whole image (slow); returns the object masks as byte strings."""
    from scipy import ndimage as ndi

    eight = np.ones((3, 3), bool)
    f = fg > tau
    comp, n = ndi.label(f, eight)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    f &= sizes[comp] >= s_min
    best = layers.argmax(0)
    found = set()
    for k in range(layers.shape[0]):
        member = (best == k) | ((layers[k] > tau) if overlaps else False)
        comp, n = ndi.label(member & f, eight)
        for j in range(1, n + 1):
            mask = comp == j
            if mask.sum() >= s_min:
                found.add(mask.tobytes())
    return found


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("overlaps", [True, False])
def test_algorithm_1_per_component_equals_the_literal_whole_image_version(seed, overlaps):
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    smooth = lambda: ndi.gaussian_filter(rng.random((60, 70)), 2.5).astype(np.float32)
    fg = smooth()
    fg = (fg - fg.min()) / (fg.max() - fg.min())
    layers = np.stack([smooth() for _ in range(N)])
    maps = Maps(arrays={"foreground": fg, **{f"layer_{k + 1}": layers[k] for k in range(N)}})
    for tau, s_min in ((0.5, 20), (0.3, 5), (0.6, 0)):
        inst = postprocess(maps, LayeringParams(tau, s_min, overlaps))
        expected = _algorithm_1_reference(fg, layers, tau, s_min, overlaps)
        assert {m.tobytes() for m in inst.masks} == expected and inst.count == len(expected)


def test_pasted_object_crosses_an_object_of_the_crop_and_adds_its_contrast_only_inside_its_mask():
    from napari_instance_tuner.core.families.layering.targets import paste_crossing

    image = np.full((1, 40, 40), 0.8, np.float32)
    masks = np.zeros((1, 40, 40), bool)
    masks[0, 18:22, 5:35] = True  # a horizontal bar
    image[0][masks[0]] = 0.3
    donor_image = np.full((1, 30, 30), 0.9, np.float32)
    donor_masks = np.zeros((2, 30, 30), bool)
    donor_masks[0, 5:25, 13:16] = True  # a vertical bar, 0.4 darker than its surroundings
    donor_masks[1, 0:3, 0:3] = True
    donor_image[0][donor_masks[0]] = 0.5
    for seed in range(6):
        out, out_masks, out_adj = paste_crossing(np.random.default_rng(seed), image, masks, np.zeros((1, 1), bool),
                                                 donor_image, donor_masks, 0, distance=3.0)
        new = out_masks[-1]
        assert out_masks.shape == (2, 40, 40) and (new & masks[0]).any()  # it crosses the bar
        assert new.sum() <= donor_masks[0].sum() and np.array_equal(out_masks[0], masks[0])
        assert np.allclose(out[0][new], image[0][new] - 0.4) and np.array_equal(out[0][~new], image[0][~new])
        assert out_adj[0, 1] and out_adj[1, 0] and not out_adj[1, 1]
    # Pasted objects go only where the crop has image.
    valid = np.zeros((40, 40), bool)
    _, none_masks, _ = paste_crossing(np.random.default_rng(0), image, np.zeros((0, 40, 40), bool),
                                      np.zeros((0, 0), bool), donor_image, donor_masks, 0, 3.0, valid=valid)
    assert none_masks.shape[0] == 0


def test_batches_with_pasting_have_more_overlaps():
    from napari_instance_tuner.core.synthetic import synthetic_worms
    from napari_instance_tuner.core.training.data import Sample

    image, labels, masks = synthetic_worms((96, 96), seed=3)
    prepared = prepare_samples([Sample("w", image, labels, masks)], 1, 1.0)

    def overlapping_pixels(p):
        _, targets, _ = BatchMaker(prepared, crop=64, batch_size=8, p_paste=p)(np.random.default_rng(1))
        return int((targets.objects.sum(1) > 1).sum())

    assert overlapping_pixels(1.0) > overlapping_pixels(0.0) + 50


def test_fixed_layers_are_kept_and_free_objects_are_assigned_around_them():
    # The triangle of touching objects 0, 1, 2 and the far object 3, all living in layer 1 (as above).
    u = torch.tensor([[[0.0, 0.9, 0.1, 0.0], [0.0, 0.8, 0.0, 0.3], [0.0, 0.7, 0.0, 0.0], [0.0, 0.9, 0.0, 0.0]]])
    adj = torch.tensor([[[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]], dtype=torch.bool)
    present = torch.ones(1, 4, dtype=torch.bool)
    fixed = torch.tensor([[3, -1, -1, -1]])
    assert L.layer_assignment(u, present, fixed=fixed).tolist() == [[3, 1, 1, 1]]
    # Object 0 holds layer 3 first; 2 keeps its arg-max 1; 1 (neighbour of both) takes its best free layer, 0.
    assert L.layer_assignment(u, present, adj, fixed).tolist() == [[3, 0, 1, 1]]
    # Fixed layers are never changed, even where two fixed neighbours share one.
    assert L.layer_assignment(u, present, adj, torch.tensor([[1, 1, -1, -1]])).tolist() == [[1, 1, 0, 1]]


def test_phase_2_loss_uses_the_fixed_layers_instead_of_the_current_arg_max():
    objects = torch.zeros(1, 2, 4, 8, dtype=torch.bool)
    objects[0, 0, :, :4] = True
    objects[0, 1, :, 4:] = True
    adj = torch.tensor([[[0, 1], [1, 0]]], dtype=torch.bool)
    logits = torch.full((1, 1 + N, 4, 8), -12.0)
    logits[0, 0] = 12.0
    logits[0, 2] = 12.0  # the model merges both objects in layer 1
    valid = torch.ones(1, 1, 4, 8)
    _, per_batch = L.LayeringLoss(phase=2)(logits, L.LayeringTargets(objects, adj), valid)
    _, fixed = L.LayeringLoss(phase=2)(logits, L.LayeringTargets(objects, adj, torch.tensor([[1, 2]])), valid)
    assert per_batch["overlap"] < 1e-4  # S follows the model's own merge
    assert fixed["overlap"] == pytest.approx(0.5, abs=1e-3)  # object 1 belongs in layer 2: half of S is missed


class _ConstantLayers(torch.nn.Module):
    """A stand-in network whose logits are fixed maps (cropped to the input size)."""

    size_divisor = 4

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.config = SimpleNamespace(n_layers=logits.shape[0] - 1)
        self.logits = logits
        self.inputs: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(tuple(x.shape))
        return self.logits[None, :, : x.shape[2], : x.shape[3]].expand(x.shape[0], -1, -1, -1)


def _two_touching_objects() -> tuple[list, torch.Tensor]:
    """A 10 x 14 training image with objects left (columns 0-6) and right (7-13), both living in layer 1,
    the right one a little in layer 3; and the logits (1 + N, 12, 16) of a network that sees them so."""
    from napari_instance_tuner.core.families.layering.train import PreparedSample

    masks = np.zeros((2, 10, 14), bool)
    masks[0, :, :7] = True
    masks[1, :, 7:] = True
    logits = torch.full((1 + N, 12, 16), -10.0)
    logits[2, :, :] = 5.0
    logits[4, :, 7:14] = 0.0
    sample = PreparedSample(np.zeros((1, 10, 14), np.float32), masks, adjacency(masks, 15.0))
    return [sample], logits


def test_fixed_layers_come_from_the_whole_training_image():
    from napari_instance_tuner.core.families.layering.targets import fixed_layers

    samples, logits = _two_touching_objects()
    model = _ConstantLayers(logits).train()
    assert [a.tolist() for a in fixed_layers(model, samples, separate=False)] == [[1, 1]]  # the paper's arg-max
    assert [a.tolist() for a in fixed_layers(model, samples, separate=True)] == [[1, 3]]
    assert model.inputs[-1] == (1, 1, 12, 16)  # the whole image, padded to the size divisor
    assert model.training  # the mode is restored for training
    # An object overlapped everywhere has no overlap-free part to take its layer from: -1 (assigned per batch).
    s = samples[0]
    inner = np.zeros((1, 10, 14), bool)
    inner[0, :4, :4] = True
    s.masks = np.concatenate([s.masks, inner])
    s.adjacency = adjacency(s.masks, 15.0)
    assert [a.tolist() for a in fixed_layers(model, samples, separate=True)] == [[1, 3, -1]]


def test_fixed_layers_are_reloaded_only_when_phase_2_resumes(tmp_path):
    from napari_instance_tuner.core.families.layering.targets import load_or_assign_layers

    samples, logits = _two_touching_objects()
    path = tmp_path / "run.phase2-layers.npz"
    first = load_or_assign_layers(_ConstantLayers(logits), samples, True, "cpu", path, resuming=False)
    assert [a.tolist() for a in first] == [[1, 3]] and path.is_file()
    other = logits.clone()
    other[2] = -10.0
    other[1] = 5.0  # a network that now prefers layer 0
    model = _ConstantLayers(other)
    assert [a.tolist() for a in load_or_assign_layers(model, samples, True, "cpu", path, True)] == [[1, 3]]
    assert model.inputs == []  # resumed: the saved S, no inference
    assert [a.tolist() for a in load_or_assign_layers(model, samples, True, "cpu", path, False)] == [[0, 3]]


def test_batches_carry_each_objects_fixed_layer_through_crops_flips_and_pastes():
    from napari_instance_tuner.core.synthetic import synthetic_worms
    from napari_instance_tuner.core.training.augment import AugmentConfig
    from napari_instance_tuner.core.training.data import Sample

    image, labels, masks = synthetic_worms((96, 96), seed=3)
    prepared = prepare_samples([Sample("w", image, labels, masks)], 1, 1.0)
    s = prepared[0]
    k = s.masks.shape[0]
    assert BatchMaker(prepared, crop=64, batch_size=2)(np.random.default_rng(0))[1].layers is None
    s.layers = np.arange(k, dtype=np.int64)[::-1].copy()
    # The image codes each object: its overlap-free pixels hold (its fixed layer + 1), so a crop can be checked.
    free = s.masks.sum(0) == 1
    code = np.zeros(s.image.shape[1:], np.float32)
    for i in range(k):
        code[s.masks[i] & free] = s.layers[i] + 1
    s.image = code[None]
    x, targets, _ = BatchMaker(prepared, crop=64, batch_size=6, augment=AugmentConfig(enabled=False))(
        np.random.default_rng(2))
    assert targets.layers.shape == targets.objects.shape[:2] and targets.layers.dtype == torch.int64
    present = targets.objects.any(dim=(2, 3))
    checked = 0
    for b in range(6):
        own = targets.objects[b] & (targets.objects[b].sum(0) == 1)
        for j in np.flatnonzero(present[b].numpy()):
            if own[j].sum() >= 5:
                assert int(x[b, 0][own[j]].median()) == int(targets.layers[b, j]) + 1
                checked += 1
        assert (targets.layers[b][~present[b]] == -1).all()  # padding has no layer
    assert checked >= 6
    # A pasted object has no fixed layer (-1): it is assigned per batch around the fixed ones.
    _, pasted, _ = BatchMaker(prepared, crop=64, batch_size=6, p_paste=1.0,
                              augment=AugmentConfig(enabled=False))(np.random.default_rng(2))
    present = pasted.objects.any(dim=(2, 3))
    unfixed = [(pasted.layers[b][present[b]] == -1).nonzero().flatten().tolist() for b in range(6)]
    counts = [int(present[b].sum()) for b in range(6)]
    assert any(unfixed) and all(u in ([], [n - 1]) for u, n in zip(unfixed, counts))  # only the last, pasted one
