"""Ensembles whose members differ in architecture (issue 20: a U-Net and an EfficientNet-Lite0 network averaged)."""

import numpy as np
import pytest
import torch

from napari_instance_tuner.core.families.three_branch.model import ThreeBranchConfig, ThreeBranchUNet
from napari_instance_tuner.core.io.checkpoint import load_model, save_checkpoint
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.registry import get_family
from napari_instance_tuner.core.training.ensemble import assemble

SHALLOW = {"in_channels": 3, "base_channels": 4, "depth": 2, "conv_type": "separable"}
DEEP = {"in_channels": 3, "base_channels": 6, "depth": 3, "conv_type": "standard"}


def _member(tmp_path, arch, tiny_meta, seed):
    torch.manual_seed(seed)
    model = get_family("three-branch").build_model(arch)
    meta = tiny_meta(name=f"m{seed}", architecture=model.config.to_dict(), training={"val_images": []})
    return load_model(save_checkpoint(tmp_path / f"m{seed}.safetensors", model.state_dict(), meta))


def test_members_of_different_architectures_average_into_one_model(tmp_path, tiny_meta):
    members = [_member(tmp_path, SHALLOW, tiny_meta, 1), _member(tmp_path, DEEP, tiny_meta, 2)]
    ensemble = assemble(members, "mixed")
    arch = ensemble.meta["architecture"]
    assert arch["members"] == 2 and [a["depth"] for a in arch["member_architectures"]] == [2, 3]
    assert ensemble.model.config.member_configs() == tuple(m.model.config for m in members)
    loaded = load_model(save_checkpoint(tmp_path / "mixed.safetensors", ensemble.model.state_dict(), ensemble.meta))
    assert loaded.model.size_divisor == 8  # the deeper member's 2 ** 3, not the first member's 2 ** 2
    assert ThreeBranchConfig.from_dict(loaded.meta["architecture"]) == loaded.model.config
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3)).astype(np.uint8)  # no multiple of 8
    maps = lambda m: run(m.family.predict_maps(m.model, image, m.meta, device="cpu")).arrays
    got, each = maps(loaded), [maps(m) for m in members]
    for name in ("foreground", "boundary", "centroid"):
        expected = (each[0][name] + each[1][name]) / 2
        assert got[name].shape == (70, 90) and np.abs(got[name] - expected).max() < 1e-4
        assert np.abs(each[0][name] - each[1][name]).max() > 1e-3  # the members do differ


def test_members_of_one_architecture_are_not_listed(tmp_path, tiny_meta):
    pair = assemble([_member(tmp_path, SHALLOW, tiny_meta, 1), _member(tmp_path, SHALLOW, tiny_meta, 2)], "pair")
    assert "member_architectures" not in pair.meta["architecture"]
    assert pair.model.config.member_configs() == (ThreeBranchConfig.from_dict(SHALLOW),) * 2


def test_member_architectures_that_do_not_fit_are_refused():
    single = ThreeBranchConfig.from_dict(SHALLOW).to_dict()
    deep = ThreeBranchConfig.from_dict(DEEP).to_dict()
    mixed = {**single, "members": 2, "member_architectures": [single, deep]}
    config = ThreeBranchConfig.from_dict(mixed)
    assert config.size_step == 8 and [c.depth for c in config.member_configs()] == [2, 3]
    assert ThreeBranchConfig.from_dict(config.to_dict()) == config
    keys = ThreeBranchUNet(config).state_dict()
    assert any(k.startswith("members.1.") for k in keys) and not any(k.startswith("members.2.") for k in keys)
    cases = [
        ({**mixed, "members": 3}, "2 member architectures for 3 members"),
        ({**mixed, "member_architectures": [single, {**deep, "branches": ["foreground"]}]},
         "every member must have the ensemble's in_channels and branches"),
        ({**mixed, "member_architectures": [single, {**deep, "in_channels": 1}]},
         "every member must have the ensemble's in_channels"),
        ({**mixed, "member_architectures": [single, {**deep, "members": 2}]}, "must be a single network"),
        ({**mixed, "member_architectures": [single, "deep"]}, "must be a dict, got str"),
        ({**mixed, "member_architectures": [single, {**deep, "depth": 9}]}, "depth must be 1..6"),
    ]
    for values, message in cases:
        with pytest.raises(ValueError, match=message):
            ThreeBranchConfig.from_dict(values)


def test_a_mixed_ensemble_exports_to_bioimageio_and_loads_back_with_the_same_maps(tmp_path, tiny_meta):
    from napari_instance_tuner.core.io.bioimageio_export import PackageInfo, export_package
    from napari_instance_tuner.core.synthetic import synthetic_glands

    mixed = assemble([_member(tmp_path, SHALLOW, tiny_meta, 1), _member(tmp_path, DEEP, tiny_meta, 2)], "mixed")
    loaded = load_model(save_checkpoint(tmp_path / "mixed.safetensors", mixed.model.state_dict(), mixed.meta))
    assert get_family("three-branch").package_network(loaded.meta).size_step == 8
    image = synthetic_glands((80, 112), seed=0)[0]
    package = export_package(loaded, image, tmp_path / "mixed.zip", PackageInfo(pixel_size=0.5, authors=["A. Tester"]))
    again = load_model(package)
    assert again.meta["architecture"]["member_architectures"] == mixed.meta["architecture"]["member_architectures"]
    maps = [run(m.family.predict_maps(m.model, image, m.meta)).arrays["foreground"] for m in (loaded, again)]
    assert np.abs(maps[0] - maps[1]).max() < 1e-5

