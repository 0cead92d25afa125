"""RoIAlign as a sparse product: the same values and gradients as torchvision's MultiScaleRoIAlign."""

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from napari_instance_tuner.core.families.maskrcnn.model import build_maskrcnn
from napari_instance_tuner.core.families.maskrcnn.sparse_roi_align import SparseMultiScaleRoIAlign

NAMES = ["0", "1", "2", "3"]


def pyramid(images: int, channels: int = 8, shape: tuple[int, int] = (128, 160), seed: int = 0) -> OrderedDict:
    """FPN-like features at strides 4-32 plus a "pool" level that the poolers must ignore."""
    g = torch.Generator().manual_seed(seed)
    h, w = shape
    feats = OrderedDict(
        (name, torch.randn(images, channels, h // 2 ** (i + 2), w // 2 ** (i + 2), generator=g).requires_grad_())
        for i, name in enumerate(NAMES))
    feats["pool"] = torch.randn(images, channels, 2, 2, generator=g)
    return feats


def boxes_for(counts: list[int], shape: tuple[int, int] = (128, 160), seed: int = 1,
              clip: bool = True) -> list[torch.Tensor]:
    """Boxes of all sizes (below one feature pixel to the whole image), some at the border or (``clip=False``)
    reaching far beyond it, where RoIAlign's samples are zero."""
    g = torch.Generator().manual_seed(seed)
    h, w = shape
    out = []
    for n in counts:
        start = torch.rand(n, 2, generator=g) * torch.tensor([w + 80.0, h + 80.0]) - 40
        size = torch.rand(n, 2, generator=g) ** 2 * torch.tensor([w, h]) + 0.1
        b = torch.cat([start, start + size], 1)
        if clip:
            b[:, 0::2], b[:, 1::2] = b[:, 0::2].clamp(0, w), b[:, 1::2].clamp(0, h)
        out.append(b)
    return out


@pytest.mark.parametrize(("counts", "size", "ratio", "clip"),
                         [([40, 0, 25], 7, 2, True), ([12, 30], 14, 2, True), ([20], 5, 3, True), ([80], 7, 2, False)])
def test_values_and_gradients_equal_torchvisions(counts, size, ratio, clip):
    feats, boxes = pyramid(len(counts)), boxes_for(counts, clip=clip)
    shapes = [(128, 160)] * len(counts)
    ours = SparseMultiScaleRoIAlign(NAMES, size, ratio)(feats, boxes, shapes)
    theirs = MultiScaleRoIAlign(NAMES, size, ratio)(feats, boxes, shapes)
    assert ours.shape == theirs.shape == (sum(counts), 8, size, size)
    assert ours.abs().max() > 0.5  # the comparison is not between zeros
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)  # float32 sums in another order
    levels = [feats[n] for n in NAMES]
    upstream = torch.randn(theirs.shape, generator=torch.Generator().manual_seed(2))
    grads_ours = torch.autograd.grad(ours, levels, upstream)
    grads_theirs = torch.autograd.grad(theirs, levels, upstream, allow_unused=True)
    assert sum(int(g.count_nonzero()) for g in grads_ours) > 100
    for g_ours, g_theirs in zip(grads_ours, grads_theirs):
        torch.testing.assert_close(g_ours, torch.zeros_like(g_ours) if g_theirs is None else g_theirs,
                                   atol=1e-4, rtol=1e-4)


def test_gradients_are_the_same_bits_run_after_run():
    feats, boxes = pyramid(2), boxes_for([60, 60])
    pool = SparseMultiScaleRoIAlign(NAMES, 7, 2)
    levels = [feats[n] for n in NAMES]
    first = torch.autograd.grad(pool(feats, boxes, [(128, 160)] * 2).square().sum(), levels)
    second = torch.autograd.grad(pool(feats, boxes, [(128, 160)] * 2).square().sum(), levels)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_no_boxes_give_an_empty_result_of_the_right_shape():
    feats = pyramid(2)
    out = SparseMultiScaleRoIAlign(NAMES, 14, 2)(feats, [torch.zeros(0, 4), torch.zeros(0, 4)], [(128, 160)] * 2)
    assert out.shape == (0, 8, 14, 14)


def test_a_nan_box_pools_zeros_and_leaves_the_other_boxes_alone():
    feats, boxes = pyramid(1), boxes_for([6])
    broken = boxes[0].clone()
    broken[2] = float("nan")
    ours = SparseMultiScaleRoIAlign(NAMES, 7, 2)(feats, [broken], [(128, 160)])
    theirs = MultiScaleRoIAlign(NAMES, 7, 2)(feats, boxes, [(128, 160)])
    assert torch.equal(ours[2], torch.zeros_like(ours[2]))
    keep = [0, 1, 3, 4, 5]
    torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-4, rtol=1e-4)


def test_adaptive_sampling_takes_torchvisions_path_exactly():
    feats, boxes = pyramid(1), boxes_for([15])
    ours = SparseMultiScaleRoIAlign(NAMES, 7, 0)(feats, boxes, [(128, 160)])
    assert torch.equal(ours, MultiScaleRoIAlign(NAMES, 7, 0)(feats, boxes, [(128, 160)]))


def test_bfloat16_features_under_autocast_pool_in_float32_and_keep_their_dtype():
    feats, boxes = pyramid(1), boxes_for([20])
    low = OrderedDict((k, v.detach().to(torch.bfloat16)) for k, v in feats.items())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = SparseMultiScaleRoIAlign(NAMES, 7, 2)(low, boxes, [(128, 160)])
    theirs = MultiScaleRoIAlign(NAMES, 7, 2)(OrderedDict((k, v.float()) for k, v in low.items()), boxes, [(128, 160)])
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), theirs, atol=2e-2, rtol=1e-2)  # bfloat16's own rounding


def test_the_detector_pools_with_it():
    heads = build_maskrcnn({"backbone": "tiny_fpn"}).roi_heads
    assert isinstance(heads.box_roi_pool, SparseMultiScaleRoIAlign)
    assert isinstance(heads.mask_roi_pool, SparseMultiScaleRoIAlign)
    assert (heads.box_roi_pool.output_size, heads.mask_roi_pool.output_size) == ((7, 7), (14, 14))
