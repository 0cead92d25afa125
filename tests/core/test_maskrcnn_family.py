"""Mask R-CNN family: config, torchvision weights (COCO layout, malicious pickles), caching, training, checkpoints."""

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_instance_tuner.core.errors import WeightsError
from napari_instance_tuner.core.evaluation.metrics import DSB_THRESHOLDS, dsb_score, evaluate
from napari_instance_tuner.core.families.maskrcnn.loss import DetectionLoss
from napari_instance_tuner.core.families.maskrcnn.model import MaskRCNNConfig, build_maskrcnn
from napari_instance_tuner.core.families.maskrcnn.targets import targets_from_instances
from napari_instance_tuner.core.families.maskrcnn.train import (
    DetectionBatches,
    MaskRCNNTrainOptions,
    PreparedSample,
    objects_longer_than,
    train_maskrcnn,
)
from napari_instance_tuner.core.families.maskrcnn.weights import load_coco_weights, load_torchvision_state_dict
from napari_instance_tuner.core.io.checkpoint import load_model, save_checkpoint
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.registry import get_family
from napari_instance_tuner.core.synthetic import synthetic_nuclei
from napari_instance_tuner.core.training.augment import AugmentConfig
from napari_instance_tuner.core.training.data import Sample
from napari_instance_tuner.core.training.loop import TrainConfig, fit

TINY = {
    "backbone": "tiny_fpn", "base_channels": 8, "fpn_channels": 32, "representation_size": 64,
    "mask_head_layers": 2, "mask_head_channels": 16, "rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 300, "rpn_batch_size_per_image": 128,
    "box_batch_size_per_image": 128, "box_detections_per_img": 100,
}
NORM = {"kind": "percentile", "low": 1.0, "high": 99.8}


def tiny_meta(**overrides) -> dict:
    meta = {"name": "tiny-maskrcnn", "family": "maskrcnn", "architecture": dict(TINY), "in_channels": 1,
            "pixel_scale": 1.0, "normalisation": NORM, "postprocess": {}, "training": {}}
    meta.update(overrides)
    return meta


# --- metric ----------------------------------------------------------------------------------------------


def test_dsb_score_hand_computed():
    gt = np.zeros((10, 10), np.int32)
    gt[0:4, 0:4] = 1  # 16 px
    gt[6:10, 0:10] = 2  # 40 px
    pred = np.zeros_like(gt)
    pred[0:4, 0:3] = 1  # IoU 12/16 = 0.75 with object 1: matched for t = 0.5 .. 0.7 (5 thresholds)
    pred[6:10, 0:9] = 2  # IoU 36/40 = 0.9 with object 2: matched for t = 0.5 .. 0.85 (8 thresholds)
    pred[0:2, 8:10] = 3  # a false positive
    # 3 predictions, 2 objects: TP 2 -> 2/3 (5x), TP 1 -> 1/4 (3x), TP 0 -> 0 (2x)
    assert dsb_score(pred, gt) == pytest.approx((5 * 2 / 3 + 3 * 1 / 4) / 10)
    assert len(DSB_THRESHOLDS) == 10 and DSB_THRESHOLDS[1] == 0.55 and DSB_THRESHOLDS[-1] == 0.95
    assert dsb_score(gt, gt) == 1.0 and dsb_score(np.zeros_like(gt), gt) == 0.0
    assert evaluate(pred, gt)["dsb_score"] == pytest.approx(dsb_score(pred, gt))
    stack = np.stack([gt == 1, gt == 2])  # bool mask stacks work too
    assert dsb_score(stack, gt) == 1.0


# --- configuration -----------------------------------------------------------------------------------------


def test_config_round_trip_and_validation():
    cfg = MaskRCNNConfig.from_dict(TINY)
    assert MaskRCNNConfig.from_dict(cfg.to_dict()) == cfg
    assert MaskRCNNConfig.from_dict({"backbone": "resnet50_fpn"}).representation_size == 1024
    assert MaskRCNNConfig.from_dict({}).mask_head_channels == 64
    for bad, match in [({"backbone": "vgg"}, "backbone"), ({"anchor_sizes": [8, 16]}, "5 positive"),
                       ({"num_classes": 1}, "num_classes"), ({"colour": 1}, "unknown")]:
        with pytest.raises(ValueError, match=match):
            MaskRCNNConfig.from_dict(bad)
    family = get_family("maskrcnn")
    assert family.name == "maskrcnn" and family.architecture({"clahe": True}, 1)["clahe"] is True
    with pytest.raises(ValueError, match="unknown maskrcnn training options"):
        MaskRCNNTrainOptions.from_dict({"alpha": 2})


# --- torchvision weights -------------------------------------------------------------------------------------


def test_coco_layout_resnet50_state_dict_loads_and_fine_tunes(tmp_path, disks_labels):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    coco = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    path = tmp_path / "maskrcnn_resnet50_fpn_coco.pth"
    torch.save(coco, path)
    model = build_maskrcnn({"backbone": "resnet50_fpn", "num_classes": 2, "frozen_bn": True,
                            "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
                            "box_batch_size_per_image": 64})
    report = load_torchvision_state_dict(model, path)
    assert report.file_classes == 91 and report.missing == [] and report.unexpected == []
    assert "roi_heads.box_predictor.cls_score.weight" in report.replaced
    own = model.state_dict()
    assert torch.equal(own["backbone.body.layer3.0.conv1.weight"], coco["backbone.body.layer3.0.conv1.weight"])
    conv5 = "roi_heads.mask_predictor.conv5_mask.weight"  # class-agnostic: loaded
    assert torch.equal(own[conv5], coco[conv5])
    assert own["roi_heads.box_predictor.cls_score.weight"].shape[0] == 2
    assert own["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape[0] == 2
    # one training step on a 64 x 64 crop moves the new heads and the loaded layers
    labels = disks_labels((64, 64), ((20, 20), (40, 44)), 8)
    image = np.repeat(((labels > 0) * 0.8 + 0.1).astype(np.float32)[..., None], 3, -1)
    batches = DetectionBatches([PreparedSample(image, labels)], crop=64, batch_size=1,
                               augment=AugmentConfig(enabled=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(epochs=1, steps_per_epoch=1, lr=1e-3, checkpoint_every_s=float("inf"))
    result = run(fit(model, batches, get_family("maskrcnn").training_step, None, config))
    after = model.state_dict()
    assert np.isfinite(result.history[0]["loss"])
    for key in ("roi_heads.box_predictor.cls_score.weight", "backbone.fpn.layer_blocks.0.0.weight",
                "roi_heads.mask_head.0.0.weight"):
        assert not torch.equal(before[key], after[key]), key
    with pytest.raises(WeightsError, match="do not fit"):  # a different anchor layout cannot take these weights
        load_torchvision_state_dict(build_maskrcnn({"backbone": "resnet50_fpn", "aspect_ratios": [1.0]}), path)


class _CreatesFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    model = build_maskrcnn(TINY)
    target = tmp_path / "pwned.txt"
    zipped = tmp_path / "evil.pth"
    torch.save({"model": _CreatesFile(str(target))}, zipped)
    raw = tmp_path / "evil_legacy.pth"
    raw.write_bytes(pickle.dumps(_CreatesFile(str(target))))
    for path in (zipped, raw):
        with pytest.raises(WeightsError, match=path.name):
            load_torchvision_state_dict(model, path)
    assert not target.exists()
    with pytest.raises(WeightsError, match="does not exist"):
        load_torchvision_state_dict(model, tmp_path / "missing.pth")
    not_weights = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_weights)
    with pytest.raises(WeightsError, match="state_dict"):
        load_torchvision_state_dict(model, not_weights)


def test_coco_download_failure_is_a_clear_error(monkeypatch):
    from urllib.error import URLError

    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    def offline(self, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(MaskRCNN_ResNet50_FPN_Weights, "get_state_dict", offline)
    with pytest.raises(WeightsError, match="offline"):
        load_coco_weights(build_maskrcnn({"backbone": "resnet50_fpn"}))
    with pytest.raises(WeightsError, match="resnet50_fpn backbone only"):
        load_coco_weights(build_maskrcnn(TINY))


# --- caching and post-processing -----------------------------------------------------------------------------


def test_postprocess_never_calls_the_network():
    family = get_family("maskrcnn")
    torch.manual_seed(0)
    model = family.build_model(TINY)
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    image, _ = synthetic_nuclei((96, 80), seed=0)
    maps = run(family.predict_maps(model, image, tiny_meta(), device="cpu"))
    assert len(calls) == 1
    extra = maps.extra
    k = len(extra["scores"])
    assert k > 10 and extra["boxes"].shape == (k, 4) and extra["mask_probs"].shape == (k, 28, 28)
    assert extra["mask_probs"].dtype == np.float16 and extra["scores"].min() >= 0.05
    assert maps.arrays["score_map"].shape == (96, 80) and maps.arrays["score_map"].dtype == np.float32
    base = replace(family.default_params(), min_size=0)
    results = {}
    settings = {"base": base, "strict_nms": replace(base, nms_iou=0.1), "loose_nms": replace(base, nms_iou=0.9),
                "low_score": replace(base, score_threshold=0.05), "high_score": replace(base, score_threshold=0.6)}
    for name, params in settings.items():
        inst = family.postprocess(maps, params)
        assert inst.labels.dtype == np.uint32 and inst.labels.shape == (96, 80)
        results[name] = inst
    assert len(calls) == 1  # every setting came from the cached detections
    assert not np.array_equal(results["strict_nms"].labels, results["loose_nms"].labels)
    assert not np.array_equal(results["low_score"].labels, results["high_score"].labels)
    assert results["strict_nms"].count < results["loose_nms"].count
    assert results["high_score"].count < results["low_score"].count


def test_grey_clahe_and_pixel_scale_are_applied():
    family = get_family("maskrcnn")
    torch.manual_seed(1)
    model = family.build_model({**TINY, "clahe": True})
    image, _ = synthetic_nuclei((64, 64), seed=2)
    maps = run(family.predict_maps(model, image, tiny_meta(pixel_scale=0.5)))
    assert maps.arrays["score_map"].shape == (64, 64)
    boxes = maps.extra["boxes"]
    assert boxes.size and boxes[:, 2].max() <= 64 + 1e-3 and boxes[:, 2].max() > 40  # boxes back at full size


# --- training ------------------------------------------------------------------------------------------------


def test_targets_from_labels_and_stacks_drop_tiny_pieces():
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 3:9] = 4
    labels[18:20, 18:20] = 7  # 4 px: dropped with min_pixels=5
    t = targets_from_instances(labels, min_pixels=5)
    np.testing.assert_array_equal(t["boxes"], [[3, 2, 9, 6]])
    assert t["masks"].shape == (1, 20, 20) and t["masks"].sum() == 24 and t["labels"].tolist() == [1]
    stack = np.zeros((20, 20, 2), bool)
    stack[0:10, 0:10, 0] = True
    stack[5:15, 5:15, 1] = True  # overlapping objects stay two masks
    t2 = targets_from_instances(stack)
    assert t2["masks"].shape == (2, 20, 20) and (t2["masks"][0] & t2["masks"][1]).sum() == 25


def test_batches_augment_consistently(disks_labels):
    labels = disks_labels((48, 48), ((12, 12), (30, 34)), 6)
    image = np.repeat((labels == 1).astype(np.float32)[..., None], 3, -1)  # only object 1 is bright
    batches = DetectionBatches([PreparedSample(image, labels)], crop=32, batch_size=6)
    x, y, valid = batches(np.random.default_rng(0))
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32 and valid.shape == (6,)
    for img, target in zip(x, y.dicts):
        for box, mask in zip(target["boxes"], target["masks"]):
            assert mask.sum() >= 4 and mask.dtype == torch.uint8
            x0, y0, x1, y1 = box.int().tolist()
            assert mask[y0:y1, x0:x1].sum() == mask.sum()  # the box holds the mask
    moved = y.to("cpu")
    assert len(moved.dicts) == 6


def test_biased_training_weights_the_mask_loss_early():
    class Fake(torch.nn.Module):  # torchvision's training-mode forward: the loss dict
        def forward(self, images, targets):
            return {"loss_classifier": torch.tensor(1.0), "loss_mask": torch.tensor(2.0)}

    family = get_family("maskrcnn")
    loss_fn = DetectionLoss(alpha=1.5, biased_steps=2)
    batch = (None, type("T", (), {"dicts": []})(), None)
    values = [float(family.training_step(Fake(), batch, loss_fn)[0]) for _ in range(3)]
    assert values == [4.0, 4.0, 3.0]
    resumed = DetectionLoss(1.5, 2, start_step=2)  # a resumed run continues the schedule
    assert family.training_step(Fake(), batch, resumed)[1]["mask_alpha"] == 1.0


def test_tiny_model_overfits_synthetic_nuclei(tmp_path):
    image, labels = synthetic_nuclei((96, 96), seed=1)
    sample = Sample("n", image, labels.astype(np.int32))
    meta = tiny_meta()
    config = TrainConfig(epochs=100, steps_per_epoch=1, lr=3e-3, checkpoint_every_s=float("inf"))
    model, result = run(train_maskrcnn(get_family("maskrcnn"), [sample], [], meta, config, options=MaskRCNNTrainOptions(biased_training=True),
                                       crop=64, batch_size=2, augment=AugmentConfig(enabled=False)))
    losses = [h["loss"] for h in result.history]
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    family = get_family("maskrcnn")
    maps = run(family.predict_maps(model, image, meta))
    pred = family.postprocess(maps, family.default_params())
    assert 0.5 * labels.max() <= pred.count <= 2 * labels.max()
    assert family.score(pred.labels, labels) > 0.1
    # the trained model survives a checkpoint round trip (float32) with identical detections; float32 inference
    # here, since bfloat16 rounding (the default where the CPU has it) may swap this barely trained model's ties
    path = save_checkpoint(tmp_path / "trained.safetensors", model.state_dict(), meta)
    loaded = load_model(path)
    fp32 = {**meta, "inference_amp": False}
    maps = run(family.predict_maps(model, image, fp32))
    again = run(loaded.family.predict_maps(loaded.model, image, {**loaded.meta, "inference_amp": False}))
    np.testing.assert_allclose(again.extra["boxes"], maps.extra["boxes"], atol=1e-3)


def test_objects_longer_than_the_crop_are_counted_and_reported_before_training():
    labels = np.zeros((80, 120), np.int32)
    labels[5:15, 5:15] = 1  # 10 x 10
    labels[20:30, 10:110] = 2  # 100 px wide
    labels[35:75, 50:60] = 3  # 40 px tall
    sample = PreparedSample(np.zeros((80, 120, 1), np.float32), labels)
    assert objects_longer_than([sample], 64) == (1, 3, 100)
    assert objects_longer_than([sample], 39) == (2, 3, 100)
    assert objects_longer_than([sample], 100) == (0, 3, 100)  # a side equal to the crop fits
    masks = np.stack([labels == k for k in (1, 2, 3)] + [np.zeros_like(labels, bool)], -1)  # one empty mask
    masks[20:60, 50:60, 0] = True  # object 1 now overlaps the others and is 55 px tall
    assert objects_longer_than([PreparedSample(sample.image, masks)], 50) == (2, 3, 100)
    assert objects_longer_than([], 64) == (0, 0, 0)
    # the training generator says so before its first step, naming the numbers; nothing when all fit
    image = np.random.default_rng(0).random((80, 120)).astype(np.float32)
    config = TrainConfig(epochs=1, steps_per_epoch=1, checkpoint_every_s=float("inf"))
    job = train_maskrcnn(get_family("maskrcnn"), [Sample("s", image, labels)], [], tiny_meta(), config,
                         crop=64, batch_size=1, augment=AugmentConfig(enabled=False))
    first = next(job)
    assert "1 of 3 training objects are longer than the 64-px crop" in first.message
    assert "longest: 100 px" in first.message and "--crop of 100" in first.message
    job.close()
    job = train_maskrcnn(get_family("maskrcnn"), [Sample("s", image, labels)], [], tiny_meta(), config,
                         crop=100, batch_size=1, augment=AugmentConfig(enabled=False))
    assert "longer than" not in next(job).message
    job.close()


# --- checkpoints and fine-tuning -----------------------------------------------------------------------------


def test_checkpoint_round_trip_and_finetune(tmp_path, disks_labels):
    from napari_instance_tuner.core.training.finetune import CorrectedImage, FinetuneSettings, finetune

    torch.manual_seed(0)
    family = get_family("maskrcnn")
    model = family.build_model(TINY)
    path = save_checkpoint(tmp_path / "tiny.safetensors", model.state_dict(), tiny_meta())
    loaded = load_model(path)
    assert loaded.family.name == "maskrcnn" and loaded.model.config == MaskRCNNConfig.from_dict(TINY)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    labels = disks_labels((48, 48), ((14, 14), (14, 34), (34, 24)), 8)
    image = ((labels > 0) * 200 + 20).astype(np.uint8)
    region = np.zeros((48, 48), bool)
    region[:, :30] = True
    settings = FinetuneSettings(steps=3, lr=1e-3, batch_size=1, crop=32, freeze_encoder=True)
    tuned, result = run(finetune(loaded, [CorrectedImage(image, labels, region)], settings))
    assert len(result.history) == 3
    new = tuned.state_dict()
    body = [k for k in new if k.startswith("backbone.body")]
    assert all(torch.equal(new[k], loaded.model.state_dict()[k]) for k in body)
    assert not torch.equal(new["roi_heads.box_predictor.cls_score.weight"],
                           loaded.model.state_dict()["roi_heads.box_predictor.cls_score.weight"])
