import json
import pickle
import struct

import pytest

from napari_instance_tuner.core.errors import WeightsError
from napari_instance_tuner.core.io.checkpoint import load_model, read_checkpoint, resolve_model_path, save_checkpoint


def test_roundtrip_keeps_weights_and_meta(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint)
    assert loaded.meta["family"] == "three-branch" and loaded.meta["format_version"] == 1
    assert loaded.family.name == "three-branch" and not loaded.model.training
    assert len(loaded.sha256) == 64 and loaded.name == "tiny"


def test_half_precision_file_loads_as_float32(tmp_path, tiny_arch, tiny_meta):
    import torch

    from napari_instance_tuner.core.registry import get_family

    model = get_family("three-branch").build_model(tiny_arch)
    full = save_checkpoint(tmp_path / "f.safetensors", model.state_dict(), tiny_meta())
    half = save_checkpoint(tmp_path / "h.safetensors", model.state_dict(), tiny_meta(), half=True)
    assert half.stat().st_size < 0.75 * full.stat().st_size  # the JSON header is the same in both
    loaded = load_model(half)
    w = next(loaded.model.parameters())
    assert w.dtype == torch.float32
    ref = dict(model.named_parameters())[next(iter(dict(loaded.model.named_parameters())))]
    assert torch.allclose(w, ref, atol=1e-2)


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(WeightsError, match="pickle"):
        load_model(evil)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,match",
    [(b"", "empty or truncated"), (b"\x01\x02", "empty or truncated"), (struct.pack("<Q", 10**9) + b"{}", "not a safetensors")],
)
def test_corrupt_files(tmp_path, content, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=match):
        read_checkpoint(path)


def test_truncated_file(tiny_checkpoint, tmp_path):
    data = tiny_checkpoint.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.safetensors"):
        load_model(cut)


def test_foreign_safetensors_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(WeightsError, match="not a napari-instance-tuner checkpoint"):
        read_checkpoint(path)


def test_future_version_and_wrong_shapes_and_family(tmp_path, tiny_arch, tiny_meta):
    import torch
    from safetensors.torch import save_file

    from napari_instance_tuner.core.registry import get_family

    model = get_family("three-branch").build_model(tiny_arch)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    future = tmp_path / "future.safetensors"
    save_file(state, str(future), metadata={"napari_instance_tuner": json.dumps({**tiny_meta(), "format_version": 99})})
    with pytest.raises(WeightsError, match="format version 99"):
        load_model(future)
    wrong = save_checkpoint(tmp_path / "wrong.safetensors", state,
                            tiny_meta(architecture={**tiny_arch, "base_channels": 8}))
    with pytest.raises(WeightsError, match="do not fit"):
        load_model(wrong)
    unknown = save_checkpoint(tmp_path / "unknown.safetensors", state, tiny_meta(family="no-such-family"))
    with pytest.raises(WeightsError, match="unknown model family 'no-such-family'"):
        load_model(unknown)
    bad_arch = save_checkpoint(tmp_path / "arch.safetensors", state, tiny_meta(architecture={"conv_type": "fancy"}))
    with pytest.raises(WeightsError, match="cannot be built"):
        load_model(bad_arch)
    del torch


def test_missing_file_and_unknown_name():
    with pytest.raises(WeightsError, match="does not exist"):
        read_checkpoint("/nonexistent/x.safetensors")
    with pytest.raises(WeightsError, match="unknown model 'no-such-model'"):
        resolve_model_path("no-such-model")


def test_save_is_atomic_on_failure(tmp_path, monkeypatch, tiny_meta):
    import os

    target = tmp_path / "keep.safetensors"
    target.write_bytes(b"original")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        save_checkpoint(target, {}, tiny_meta())
    assert target.read_bytes() == b"original"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]


@pytest.mark.parametrize("first_byte", [0x80, 0x50])
def test_header_lengths_that_look_like_pickle_or_zip_magic_still_load(tmp_path, first_byte, tiny_arch, tiny_meta):
    """The 8-byte header length may start with 0x80 (pickle) or 'P' (zip): the file is still safetensors."""
    from napari_instance_tuner.core.registry import get_family

    model = get_family("three-branch").build_model(tiny_arch)
    for pad in range(0, 4096, 7):
        path = save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), tiny_meta(note="x" * pad))
        if path.read_bytes()[0] == first_byte:
            break
    else:
        pytest.fail("no padding produced the wanted first byte")
    loaded = load_model(path)
    assert loaded.meta["note"] == "x" * pad


def test_a_shipped_cards_test_time_limits_replace_the_trained_ones_and_reach_the_recipe(tmp_path):
    import shutil

    from napari_instance_tuner.core.io.checkpoint import WEIGHTS_DIR, model_card
    from napari_instance_tuner.core.io.recipe import make_recipe
    from napari_instance_tuner.core.params import params_from_dict

    card = model_card("maskrcnn-dsb2018")["test_time"]
    shipped = load_model("maskrcnn-dsb2018")
    assert shipped.model.config.rpn_post_nms_top_n_test == card["rpn_post_nms_top_n_test"] != 2000
    assert shipped.meta["trained_test_time"] == {"rpn_pre_nms_top_n_test": 2000, "rpn_post_nms_top_n_test": 2000}
    assert make_recipe(shipped, params_from_dict(shipped.family.Params, shipped.meta["postprocess"]), "img", (64, 64))["test_time"] == card
    # the same weights outside the package are a user's file: its own metadata rules
    copy = shutil.copy(WEIGHTS_DIR / "maskrcnn-dsb2018.safetensors", tmp_path / "mine.safetensors")
    mine = load_model(copy)
    assert mine.model.config.rpn_post_nms_top_n_test == 2000 and "trained_test_time" not in mine.meta
    assert "test_time" not in make_recipe(mine, params_from_dict(mine.family.Params, mine.meta["postprocess"]), "img",
                                          (64, 64))


def test_a_card_may_set_only_its_familys_test_time_keys(tmp_path, monkeypatch, tiny_checkpoint):
    import shutil

    from napari_instance_tuner.core.io import checkpoint

    monkeypatch.setattr(checkpoint, "WEIGHTS_DIR", tmp_path)
    shutil.copy(tiny_checkpoint, tmp_path / "t.safetensors")
    (tmp_path / "t.json").write_text(json.dumps({"test_time": {"base_channels": 64}}))
    with pytest.raises(WeightsError, match=r"'t' sets \['base_channels'\] at test time"):
        load_model("t")
