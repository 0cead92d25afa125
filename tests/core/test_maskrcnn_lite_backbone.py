"""Mask R-CNN with an EfficientNet-Lite trunk under an FPN: levels, normalisation, ImageNet start, training, packages."""

import numpy as np
import pytest
import torch

from napari_instance_tuner.cli import main
from napari_instance_tuner.core.errors import InstanceTunerError
from napari_instance_tuner.core.families.efficientnet_lite import EfficientNetLiteEncoder, variant_widths
from napari_instance_tuner.core.families.maskrcnn import model as maskrcnn_model
from napari_instance_tuner.core.families.maskrcnn.model import MaskRCNNConfig, build_maskrcnn
from napari_instance_tuner.core.families.maskrcnn.train import (
    BACKBONE_CHOICES,
    MaskRCNNTrainOptions,
    initialise,
)
from napari_instance_tuner.core.io.checkpoint import load_model

#: A small detector on the Lite0 trunk (the trunk's size is fixed; the FPN and heads are narrow).
LITE = {"backbone": "efficientnet_lite0_fpn", "fpn_channels": 16, "representation_size": 32, "mask_head_layers": 1,
        "mask_head_channels": 8, "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 100,
        "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 100, "rpn_batch_size_per_image": 64,
        "box_batch_size_per_image": 64, "box_detections_per_img": 50}


def trunk_state(seed: int, variant: str = "lite0") -> dict:
    """A trunk ``state_dict`` file's content (random weights of a fixed seed)."""
    torch.manual_seed(seed)
    trunk = EfficientNetLiteEncoder(variant)
    for p in trunk.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return trunk.state_dict()


def test_the_cli_choices_are_the_models_backbones():
    assert BACKBONE_CHOICES == maskrcnn_model.BACKBONES


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_the_fpn_gives_five_levels_of_its_width_from_the_trunks_strides_4_to_32(variant):
    model = build_maskrcnn({**LITE, "backbone": f"efficientnet_{variant}_fpn"}).eval()
    assert model.backbone.fpn.inner_blocks[0][0].in_channels == variant_widths(variant)[1]  # stride 4, not 2
    features = model.backbone(torch.rand(1, 3, 64, 96))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape[1:]) for f in features.values()] == [(16, 64 // s, 96 // s) for s in (4, 8, 16, 32)] + \
        [(16, 1, 2)]


def test_the_trunk_normalises_its_input_so_the_detector_does_not():
    lite, tiny = build_maskrcnn(LITE), build_maskrcnn({"backbone": "tiny_fpn"})
    assert lite.transform.image_mean == [0.0, 0.0, 0.0] and lite.transform.image_std == [1.0, 1.0, 1.0]
    assert tiny.transform.image_mean == [0.485, 0.456, 0.406]  # torchvision's, as before
    # The heads take the small backbones' default widths unless given (metadata stores the filled values).
    cfg = MaskRCNNConfig.from_dict({"backbone": "efficientnet_lite2_fpn"})
    assert (cfg.representation_size, cfg.mask_head_channels) == (256, 64)
    assert MaskRCNNConfig.from_dict(cfg.to_dict()) == cfg


def test_the_trunk_starts_from_the_given_weights_and_a_wrong_file_is_one_clear_error(tmp_path):
    path = tmp_path / "lite0.pth"
    torch.save(trunk_state(3), path)
    model = build_maskrcnn(LITE)
    summary = initialise(model, MaskRCNNTrainOptions(backbone="efficientnet_lite0_fpn", encoder_weights=str(path)))
    assert summary == {"source": f"backbone trunk: {path}"}
    assert torch.equal(model.backbone.body._blocks[4]._project_conv.weight, trunk_state(3)["_blocks.4._project_conv.weight"])
    fpn_before = model.backbone.fpn.layer_blocks[0][0].weight.clone()
    stem_before = model.backbone.body._conv_stem.weight.clone()
    assert initialise(model, MaskRCNNTrainOptions(encoder_weights="none")) == {"source": "backbone trunk: none (random)"}
    assert torch.equal(model.backbone.body._conv_stem.weight, stem_before)
    assert torch.equal(model.backbone.fpn.layer_blocks[0][0].weight, fpn_before)
    lite2 = tmp_path / "lite2.pth"
    torch.save(trunk_state(3, "lite2"), lite2)
    with pytest.raises(InstanceTunerError, match="--encoder-weights .*not EfficientNet-Lite0 weights"):
        initialise(model, MaskRCNNTrainOptions(encoder_weights=str(lite2)))
    # A tiny_fpn model has no trunk to start: every weight stays random, as before.
    assert initialise(build_maskrcnn({"backbone": "tiny_fpn"}), MaskRCNNTrainOptions(encoder_weights=str(path))) is None


def test_coco_weights_are_refused_for_a_backbone_they_do_not_fit():
    with pytest.raises(ValueError, match="resnet50_fpn"):
        MaskRCNNTrainOptions(backbone="efficientnet_lite2_fpn", coco_pretrained=True).checked()


def test_train_from_the_cli_records_the_trunk_weights_and_detects(tmp_path, disks_labels, write_split):
    rng = np.random.default_rng(0)
    labels = [disks_labels((64, 64), ((16, 16 + i), (44, 40)), 9) for i in range(2)]
    images = [(np.stack([(lab > 0) * 120] * 3, -1) + rng.integers(0, 80, (64, 64, 3))).astype(np.uint8)
              for lab in labels]
    split = write_split(tmp_path / "train", [(f"img{i}", images[i], labels[i]) for i in range(2)])
    weights = tmp_path / "lite0.pth"
    torch.save(trunk_state(5), weights)
    ckpt = tmp_path / "mr.safetensors"
    args = ["train", "--family", "maskrcnn", "--data", str(split), "--out", str(ckpt), "--epochs", "1",
            "--steps-per-epoch", "1", "--backbone", "efficientnet_lite0_fpn", "--fpn-channels", "16",
            "--encoder-weights", str(weights), "--crop", "64", "--batch-size", "2", "--pixel-scale", "1",
            "--val-fraction", "0", "--no-autotune", "--workdir", str(tmp_path / "work"), "--quiet", "--float32"]
    assert main(args) == 0
    loaded = load_model(ckpt)
    assert loaded.meta["architecture"]["backbone"] == "efficientnet_lite0_fpn"
    assert loaded.meta["architecture"]["fpn_channels"] == 16
    assert loaded.meta["training"]["init"] == {"source": f"backbone trunk: {weights}"}
    # One Adam step moves a weight by about the learning rate at most: the trunk started from the file.
    start = trunk_state(5)["_blocks.6._depthwise_conv.weight"]
    assert (loaded.model.backbone.body._blocks[6]._depthwise_conv.weight - start).abs().max() < 0.01
    detections = loaded.model.detect(torch.rand(1, 3, 64, 64))[0]
    assert detections["masks"].shape[1:] == (28, 28) and len(detections["boxes"]) == len(detections["scores"])


def test_the_bioimageio_bundle_holds_the_trunk_and_gives_the_same_score_map():
    from napari_instance_tuner.core.io.bioimageio_network import bundle_source, load_bundle
    from napari_instance_tuner.core.registry import get_family

    family = get_family("maskrcnn")
    torch.manual_seed(0)
    model = build_maskrcnn(LITE).eval()
    bundle = load_bundle(bundle_source(family.package_network({"architecture": LITE})))  # one file, no plugin import
    packaged = bundle.build_maskrcnn(LITE).eval()
    packaged.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    ours, theirs = model.detect(x)[0], packaged.detect(x)[0]
    assert torch.equal(ours["boxes"], theirs["boxes"]) and torch.equal(ours["masks"], theirs["masks"])
    # A model of another backbone bundles no trunk.
    assert "EfficientNetLiteEncoder" not in bundle_source(family.package_network({"architecture": {}}))
