"""MaskPlus options of the Mask R-CNN family: quasi-multitask auxiliary masks and boundary refinement."""

import numpy as np
import pytest
import torch
from test_maskrcnn_family import TINY, tiny_meta

from napari_instance_tuner.core.families.maskrcnn.maskplus import AuxiliaryMaskHead, DenseBoundaryRefinement
from napari_instance_tuner.core.families.maskrcnn.model import MaskRCNNConfig, build_maskrcnn
from napari_instance_tuner.core.families.maskrcnn.train import DetectionBatches, PreparedSample, train_maskrcnn
from napari_instance_tuner.core.io.checkpoint import load_model, save_checkpoint
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.registry import get_family
from napari_instance_tuner.core.synthetic import synthetic_nuclei
from napari_instance_tuner.core.training.augment import AugmentConfig
from napari_instance_tuner.core.training.data import Sample
from napari_instance_tuner.core.training.loop import TrainConfig


def _batch(seed=0):
    image, labels = synthetic_nuclei((64, 64), seed=seed)
    rgb = np.repeat((image.astype(np.float32) / 255.0)[..., None], 3, -1)
    maker = DetectionBatches([PreparedSample(rgb, labels.astype(np.int32))], crop=64, batch_size=2,
                             augment=AugmentConfig(enabled=False))
    return maker(np.random.default_rng(seed))


def _twin(plain, **options):
    """A model with MaskPlus options holding ``plain``'s weights (its new modules keep their own)."""
    torch.manual_seed(1)
    other = build_maskrcnn({**TINY, **options})
    missing, unexpected = other.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(("aux_head" in k) or (".refine." in k) for k in missing)
    return other


def test_config_options_round_trip_and_are_validated():
    cfg = MaskRCNNConfig.from_dict({**TINY, "aux_mask_sizes": [56, 14], "boundary_refinement": True})
    assert cfg.aux_mask_sizes == (14, 56) and MaskRCNNConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="aux_mask_sizes"):
        MaskRCNNConfig.from_dict({"aux_mask_sizes": [28]})
    with pytest.raises(ValueError, match="subset"):
        AuxiliaryMaskHead(8, 8, 2, ())


def test_boundary_refinement_is_dense_and_starts_as_the_identity():
    refine = DenseBoundaryRefinement(2)
    assert [b[2].in_channels for b in refine.blocks] == [2, 6, 10, 14]  # each module sees all earlier outputs
    assert refine.out.in_channels == 18
    logits = torch.randn(5, 2, 28, 28)
    assert torch.equal(refine(logits), logits)
    torch.nn.init.normal_(refine.out.weight)
    assert not torch.allclose(refine(logits), logits)


def test_quasi_multitask_adds_two_losses_and_leaves_torchvision_losses_unchanged():
    torch.manual_seed(0)
    plain = build_maskrcnn(TINY).train()
    aux = _twin(plain, aux_mask_sizes=[14, 56]).train()
    x, y, _ = _batch()
    torch.manual_seed(5)
    base = plain(list(x), y.dicts)
    torch.manual_seed(5)
    extended = aux(list(x), y.dicts)
    assert set(extended) == set(base) | {"loss_mask_aux14", "loss_mask_aux56"}
    for key, value in base.items():  # the same sampled RoIs, the same torchvision losses
        assert torch.allclose(extended[key], value), key
    assert all(0 < float(extended[k].detach()) < 10 for k in ("loss_mask_aux14", "loss_mask_aux56"))
    (extended["loss_mask_aux14"] + extended["loss_mask_aux56"]).backward()
    head = aux.roi_heads.aux_head
    assert head.logits14.weight.grad.abs().sum() > 0 and head.logits56.weight.grad.abs().sum() > 0
    assert aux.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0  # they train the shared features
    assert aux.roi_heads.mask_predictor.mask_fcn_logits.weight.grad is None  # not the output branch


def test_options_do_not_change_detections_of_the_same_weights():
    torch.manual_seed(0)
    plain = build_maskrcnn(TINY).eval()
    image = torch.from_numpy(_batch()[0][0].numpy())[None]
    reference = plain.detect(image)[0]
    for options in ({"aux_mask_sizes": [14, 56]}, {"boundary_refinement": True}):
        out = _twin(plain, **options).eval().detect(image)[0]
        assert torch.equal(out["boxes"], reference["boxes"]), options
        assert torch.allclose(out["masks"], reference["masks"]), options


def test_training_with_both_options_and_checkpoint_round_trip(tmp_path):
    image, labels = synthetic_nuclei((96, 96), seed=1)
    arch = {**TINY, "aux_mask_sizes": [14, 56], "boundary_refinement": True}
    meta = tiny_meta(architecture=arch)
    config = TrainConfig(epochs=4, steps_per_epoch=1, lr=3e-3, checkpoint_every_s=float("inf"))
    torch.manual_seed(0)
    model, result = run(train_maskrcnn(get_family("maskrcnn"), [Sample("n", image, labels.astype(np.int32))], [], meta, config, crop=64,
                                       batch_size=2, augment=AugmentConfig(enabled=False)))
    assert len(result.history) == 4 and np.isfinite([h["loss"] for h in result.history]).all()
    refine = model.roi_heads.mask_predictor.refine
    assert refine.out.weight.abs().sum() > 0  # the refinement learned something
    path = save_checkpoint(tmp_path / "plus.safetensors", model.state_dict(), meta)
    loaded = load_model(path)
    assert loaded.model.config.aux_mask_sizes == (14, 56) and loaded.model.config.boundary_refinement
    x = torch.from_numpy(np.repeat((image.astype(np.float32) / 255.0)[None], 3, 0))[None]
    a, b = model.eval().detect(x)[0], loaded.model.detect(x)[0]  # (training left the model channels_last)
    assert a["boxes"].shape == b["boxes"].shape and torch.allclose(a["boxes"], b["boxes"], atol=1e-3)
    assert torch.allclose(a["masks"], b["masks"], atol=1e-4)
