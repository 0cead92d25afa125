"""U-Net's separation weight on the foreground loss (issue 20, session 16): targets, batches, loss, options."""

import numpy as np
import pytest
import torch

from napari_instance_tuner.core.families.three_branch.loss import weighted_bce
from napari_instance_tuner.core.families.three_branch.targets import PAPER_SCALE, TargetConfig, separation_weights
from napari_instance_tuner.core.families.three_branch.train import (
    BatchMaker,
    ThreeBranchTrainOptions,
    prepare_samples,
)
from napari_instance_tuner.core.training.augment import AugmentConfig
from napari_instance_tuner.core.training.data import Sample


def two_squares(gap=4, size=10, height=30, width=60):
    """int32 (height, width): squares 1 and 2, ``gap`` background columns between them, in the middle rows."""
    labels = np.zeros((height, width), np.int32)
    top, left = (height - size) // 2, 10
    labels[top : top + size, left : left + size] = 1
    labels[top : top + size, left + size + gap : left + 2 * size + gap] = 2
    return labels


def test_separation_weight_follows_the_unet_formula_between_two_objects():
    labels = two_squares(gap=4)
    w0, sigma = 10.0, 3.0
    weights = separation_weights(labels, w0, sigma)
    assert weights.dtype == np.float32 and weights.shape == labels.shape
    assert np.all(weights[labels > 0] == 0)
    # A gap pixel in the middle rows: one column from square 1, four from square 2 (EDT to the nearest pixel).
    row, col = 15, 20
    assert labels[row, col - 1] == 1 and labels[row, col + 4] == 2 and labels[row, col : col + 4].max() == 0
    d1, d2 = 1.0, 4.0
    assert weights[row, col] == pytest.approx(w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2)), rel=1e-5)
    # the gap weighs more than the open background beside one square only, which gets almost nothing
    assert weights[15, 20:24].min() > 5 * weights[15, 5]
    assert weights[0, 0] < 1e-3 * w0
    # a wider gap weighs less
    assert separation_weights(two_squares(gap=12), w0, sigma)[15, 20:32].max() < weights[15, 20:24].min()


@pytest.mark.parametrize("labels, w0", [(two_squares(), 0.0), (np.where(two_squares() == 1, 1, 0), 10.0),
                                        (np.zeros((20, 20), np.int32), 10.0)])
def test_separation_weight_is_zero_when_off_or_with_fewer_than_two_objects(labels, w0):
    assert not separation_weights(labels, w0, 3.0).any()


def test_separation_weight_ignores_objects_beyond_its_reach():
    labels = two_squares(gap=30, width=80)  # 30 px apart, reach 4 sigma = 8 px
    assert not separation_weights(labels, 10.0, 2.0).any()


def _maker(weight, branches=("foreground", "boundary", "centroid")):
    labels = two_squares(gap=3, size=12, height=32, width=40)
    image = np.stack([(labels > 0) * 200 + 20] * 3, -1).astype(np.uint8)
    plain = AugmentConfig(enabled=False)
    return BatchMaker(prepare_samples([Sample("s", image, labels)], 3, 1.0), crop=32, batch_size=3, pixel_scale=1.0,
                      targets=TargetConfig(3, 5, separation_weight=weight, separation_sigma=3.0), augment=plain,
                      branches=branches), labels


def test_batches_carry_the_separation_weight_as_a_second_valid_channel():
    maker, _ = _maker(10.0)
    _, y, valid = maker(np.random.default_rng(0))
    assert valid.shape == (3, 2, 32, 32)
    assert torch.all(valid[:, 0] == 1)
    extra, foreground = valid[:, 1], y[:, 0]
    assert torch.all(extra[foreground > 0] == 0)  # background only
    assert extra.max() > 5  # the 3-px gap between the squares
    plain, _ = _maker(0.0)
    assert plain(np.random.default_rng(0))[2].shape == (3, 1, 32, 32)
    # a model without a foreground branch gets no separation weight
    assert _maker(10.0, branches=("boundary", "centroid"))[0](np.random.default_rng(0))[2].shape[1] == 1


def test_the_separation_weight_is_scaled_with_the_training_pixel_scale():
    config = TargetConfig(separation_sigma=4.0)
    assert config.separation_sigma_at(PAPER_SCALE) == pytest.approx(4.0)
    assert config.separation_sigma_at(2 * PAPER_SCALE) == pytest.approx(8.0)


def test_weighted_bce_adds_the_extra_weight_to_the_foreground_branch_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    targets = (torch.rand(2, 3, 8, 8) > 0.5).float()
    valid = torch.ones(2, 1, 8, 8)
    base, parts = weighted_bce(logits, targets, valid)
    zero, zero_parts = weighted_bce(logits, targets, torch.cat([valid, torch.zeros_like(valid)], 1))
    assert float(zero) == pytest.approx(float(base)) and zero_parts == pytest.approx(parts)
    extra = torch.zeros_like(valid)
    extra[..., 2, 3] = 5.0
    _, more_parts = weighted_bce(logits, targets, torch.cat([valid, extra], 1))
    assert more_parts[1:] == pytest.approx(parts[1:])
    pixel = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0, 2, 3], targets[:, 0, 2, 3], reduction="sum")
    assert more_parts[0] - parts[0] == pytest.approx(float(5.0 * pixel / valid.sum()), rel=1e-4)
    # pixels outside the valid mask stay out, whatever their extra weight
    masked = valid.clone()
    masked[..., 2, 3] = 0
    _, out_parts = weighted_bce(logits, targets, torch.cat([masked, extra], 1))
    _, ref_parts = weighted_bce(logits, targets, masked)
    assert out_parts[0] == pytest.approx(ref_parts[0])


def test_training_options_pass_the_separation_weight_to_the_targets():
    targets = ThreeBranchTrainOptions(separation_weight=10.0, separation_sigma=2.5).targets()
    assert (targets.separation_weight, targets.separation_sigma) == (10.0, 2.5)
    assert TargetConfig(**targets.to_dict()) == targets  # recorded in the checkpoint and read back by fine-tuning
    assert ThreeBranchTrainOptions().targets().separation_weight == 0.0  # the paper's loss by default
