"""Shipping a model (``scripts/ship_model.py``): the card is made from the checkpoint, a text file and the k-fold
benchmark's JSON, so that it can be made again; the default moves; a shipped model is not replaced silently."""

import json

import pytest
import torch

from napari_instance_tuner.core.io.checkpoint import file_sha256, read_checkpoint, save_checkpoint
from napari_instance_tuner.core.registry import get_family


def _m(f1: float, dice: float, hd: float) -> dict:
    return {"object_f1": f1, "object_dice": dice, "object_hausdorff": hd, "n_images": 2}


# what benchmarks/glas_lopo_tuning.py --json writes (the keys the card reads)
KFOLD = {
    "all": {
        "leave_one_patient_out": {"all": _m(0.88912, 0.8838, 57.56), "benign": _m(0.93, 0.91, 43.4),
                                  "malignant": _m(0.8048, 0.8542, 73.7)},
        "by_patient": {"1": {"malignant": _m(0.7024, 0.7661, 104.2)}, "3": {"benign": _m(0.9, 0.9, 30.0)},
                       "7": {"malignant": _m(0.797, 0.845, 61.6), "benign": _m(1.0, 0.95, 10.0)}},
        "testB_patients": {"patients": ["1", "3", "7"], "figures": {"malignant": _m(0.7512, 0.8049, 83.4)}},
    },
    "by_split": {"all": {"validation": {"malignant": _m(0.741, 0.785, 102.0), "all": _m(0.8, 0.8, 90.0)},
                         "extra": {"malignant": _m(0.83, 0.883, 62.0), "all": _m(0.906, 0.902, 46.0)}}},
}


def test_figures_by_patient_reads_the_kfold_json(ship):
    got = ship.figures_by_patient(KFOLD)
    assert got["all"] == {"object_f1": 0.889, "object_dice": 0.884, "object_hausdorff": 58}
    # patient 3 has no malignant image: not among the testB patients' malignant figures
    assert got["testB_patients_malignant"] == {"patients": ["1", "7"], "object_f1": 0.751, "object_dice": 0.805,
                                               "object_hausdorff": 83}
    assert got["patient_1_malignant"]["object_f1"] == 0.702 and "patient_3_malignant" not in got
    assert got["testA_malignant"]["object_dice"] == 0.883 and got["validation_images_all"]["object_hausdorff"] == 90
    other = {"pooled": KFOLD["all"], "by_split": {"pooled": KFOLD["by_split"]["all"]}}  # another rule's figures
    assert ship.figures_by_patient(other, "pooled") == got


@pytest.fixture
def ship(script):
    """``scripts/ship_model.py`` as a module."""
    return script("ship_model")


@pytest.fixture
def shipped(tmp_path, tiny_arch, tiny_meta):
    """A checkpoint to ship, a weights folder whose 'old' model is the RGB default, and a card text file."""
    torch.manual_seed(0)
    model = get_family("three-branch").build_model(tiny_arch)
    meta = tiny_meta(name="trained", architecture=dict(tiny_arch),
                     training={"train_images": ["a", "b"], "val_images": [], "augment": {"p_flip": 0.5},
                               "targets": {"centroid_mode": "inside"}, "command": "train ..."},
                     metrics={"cross_fit": {"all": {"object_f1": 0.9}}})
    checkpoint = save_checkpoint(tmp_path / "trained.safetensors", model.state_dict(), meta)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "old.json").write_text(json.dumps({"name": "old", "default_for": ["rgb", "grey"]}))
    (weights / "other.json").write_text(json.dumps({"name": "other"}))
    kfold, text = tmp_path / "kfold.json", tmp_path / "card.json"
    kfold.write_text(json.dumps(KFOLD))
    text.write_text(json.dumps({"summary": "glands", "trained_on": "GlaS", "command": "resumed run: see runs/x.sh"}))
    args = [str(checkpoint), "--name", "new", "--card-json", str(text), "--kfold-json", str(kfold),
            "--pixel-size-um", "0.62", "--default-for", "rgb", "--weights-dir", str(weights)]
    return checkpoint, weights, args


def test_the_card_holds_the_checkpoint_the_text_and_the_kfold_figures(ship, shipped):
    _, weights, args = shipped
    ship.main(args)
    card = json.loads((weights / "new.json").read_text())
    target = weights / "new.safetensors"
    _, meta = read_checkpoint(target)
    assert meta["name"] == "new" and meta["pixel_size_um"] == 0.62  # set in the shipped copy's metadata
    assert card["sha256"] == file_sha256(target) and card["pixel_size_um"] == 0.62
    assert card["summary"] == "glands" and card["trained_on"] == "GlaS"
    assert card["command"] == "resumed run: see runs/x.sh"  # the text file has the last word
    assert card["augment"] == {"p_flip": 0.5} and card["targets"] == {"centroid_mode": "inside"}
    assert card["validation"] == {"all": {"object_f1": 0.9}}  # cross-fitted figures when no validation split
    assert card["validation_by_patient"]["testB_patients_malignant"]["object_f1"] == 0.751
    assert card["parameters"] == sum(p.numel() for p in get_family("three-branch").build_model(meta["architecture"])
                                     .parameters())
    # the default for RGB moved; the old model keeps what it still is the default for
    assert card["default_for"] == ["rgb"]
    assert json.loads((weights / "old.json").read_text())["default_for"] == ["grey"]
    assert "default_for" not in json.loads((weights / "other.json").read_text())


def test_a_shipped_model_is_replaced_only_when_asked(ship, shipped, capsys):
    _, weights, args = shipped
    ship.main(args)
    first = (weights / "new.safetensors").read_bytes()
    with pytest.raises(SystemExit):
        ship.main(args)
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert (weights / "new.safetensors").read_bytes() == first
    ship.main([*args, "--overwrite", "--pixel-size-um", "0.5"])
    assert read_checkpoint(weights / "new.safetensors")[1]["pixel_size_um"] == 0.5


def test_a_card_needs_a_summary(ship, shipped, tmp_path, capsys):
    _, weights, args = shipped
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"trained_on": "GlaS"}))
    with pytest.raises(SystemExit):
        ship.main([*args, "--card-json", str(bare)])
    assert "--summary or a 'summary' field" in capsys.readouterr().err
    assert not (weights / "new.safetensors").exists()
