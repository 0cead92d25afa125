"""End to end through the console entry point: train a tiny model, list, predict, evaluate."""

import json

import numpy as np
import pytest
import tifffile

from napari_instance_tuner.cli import main
from napari_instance_tuner.core.io.mask_stack import read_mask_stack
from napari_instance_tuner.core.training.loop import bfloat16_supported


@pytest.fixture
def toy_split(tmp_path, disks_labels):
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    split = tmp_path / "data" / "train"
    (split / "images").mkdir(parents=True)
    (split / "labels").mkdir()
    for i in range(4):
        labels = disks_labels((48, 64), ((14, 14 + i), (30, 40), (34, 14)), 8)
        image = (np.stack([(labels > 0) * 120] * 3, -1) + rng.integers(0, 80, (48, 64, 3))).astype(np.uint8)
        iio.imwrite(split / "images" / f"img{i}.png", image)
        tifffile.imwrite(split / "labels" / f"img{i}.tif", labels.astype(np.uint16))
    return split


def test_train_predict_evaluate(toy_split, tmp_path, capsys):
    ckpt = tmp_path / "toy.safetensors"
    args = ["train", "--data", str(toy_split), "--out", str(ckpt), "--epochs", "2", "--steps-per-epoch", "2",
            "--base-channels", "4", "--depth", "2", "--crop", "32", "--batch-size", "2", "--pixel-scale", "1",
            "--validate-every", "1", "--val-fraction", "0.25", "--workdir", str(tmp_path / "work"), "--quiet"]
    assert main(args + ["--no-autotune"]) == 0
    assert ckpt.is_file() and (tmp_path / "work" / "toy.resume.pt").is_file()
    out_dir = tmp_path / "pred"
    assert main(["predict", "--model", str(ckpt), "--out", str(out_dir), str(toy_split / "images" / "img0.png")]) == 0
    written = tifffile.imread(out_dir / "img0.tif")
    assert written.shape == (48, 64) and written.dtype == np.uint16
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"fg_threshold": 0.0, "require_centroid": False, "subtract_boundaries": False,
                                  "min_size": 0, "close_radius": 0, "open_radius": 0}))
    assert main(["predict", "--model", str(ckpt), "--params", str(params), "--out", str(out_dir),
                 str(toy_split / "images" / "img1.png")]) == 0
    assert tifffile.imread(out_dir / "img1.tif").max() == 1  # threshold 0: everything is one object
    capsys.readouterr()
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(ckpt), "--data", str(toy_split), "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "object F1" in printed and "all" in printed
    summary = json.loads(report.read_text())["summary"]["all"]
    assert summary["n_images"] == 4 and 0.0 <= summary["object_f1"] <= 1.0


def test_train_records_stain_elastic_and_extra_data(toy_split, tmp_path):
    import shutil

    extra = tmp_path / "data" / "more"
    shutil.copytree(toy_split, extra)
    for path in (extra / "images").iterdir():
        path.rename(path.with_name("more_" + path.name))
    for path in (extra / "labels").iterdir():
        path.rename(path.with_name("more_" + path.name))
    ckpt = tmp_path / "levers.safetensors"
    args = ["train", "--data", str(toy_split), "--out", str(ckpt), "--epochs", "1", "--steps-per-epoch", "1",
            "--base-channels", "4", "--depth", "2", "--crop", "32", "--batch-size", "2", "--pixel-scale", "1",
            "--val-fraction", "0.25", "--workdir", str(tmp_path / "work"), "--quiet", "--no-autotune",
            "--stain-jitter", "0.5", "--stain-strength", "0.2", "--elastic", "0.3", "--extra-data", str(extra),
            "--lr-decay-from", "0"]
    assert main(args) == 0
    meta = __import__("napari_instance_tuner.core.io.checkpoint", fromlist=["x"]).read_metadata(ckpt)
    assert meta["training"]["optimiser"]["lr_decay_from"] == 0
    augment = meta["training"]["augment"]
    assert (augment["p_stain"], augment["stain_strength"], augment["p_elastic"]) == (0.5, 0.2, 0.3)
    trained = meta["training"]["train_images"]
    assert sorted(n for n in trained if n.startswith("more_")) == [f"more_img{i}" for i in range(4)]
    assert meta["training"]["extra_data"] == [str(extra)]
    assert not set(trained) & set(meta["training"]["val_images"])


def test_train_with_no_validation_uses_every_image_and_keeps_the_last_weights(toy_split, tmp_path):
    from napari_instance_tuner.core.families.three_branch.postprocess import ThreeBranchParams
    from napari_instance_tuner.core.io.checkpoint import read_metadata
    from napari_instance_tuner.core.params import params_to_dict

    ckpt = tmp_path / "all.safetensors"
    args = ["train", "--data", str(toy_split), "--out", str(ckpt), "--epochs", "3", "--steps-per-epoch", "1",
            "--base-channels", "4", "--depth", "2", "--crop", "32", "--batch-size", "2", "--pixel-scale", "1",
            "--val-fraction", "0", "--workdir", str(tmp_path / "work"), "--quiet"]
    assert main(args) == 0
    training = read_metadata(ckpt)["training"]
    assert sorted(training["train_images"]) == [f"img{i}" for i in range(4)] and training["val_images"] == []
    assert training["best_epoch"] == 3 and len(training["history"]) == 3  # the last weights, none selected
    meta = read_metadata(ckpt)
    assert "metrics" not in meta and "autotune" not in training
    assert meta["postprocess"] == params_to_dict(ThreeBranchParams())  # nothing to tune on: the defaults


def test_train_shows_a_step_bar_and_epoch_lines_unless_quiet(toy_split, tmp_path, capsys):
    args = ["train", "--data", str(toy_split), "--out", str(tmp_path / "bar.safetensors"), "--epochs", "2",
            "--steps-per-epoch", "2", "--base-channels", "4", "--depth", "2", "--crop", "32", "--batch-size", "2",
            "--pixel-scale", "1", "--validate-every", "1", "--val-fraction", "0.25", "--no-autotune",
            "--workdir", str(tmp_path / "work")]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "epoch    1 loss=" in captured.out and "epoch    2 loss=" in captured.out
    assert "train" in captured.err and "4/4" in captured.err  # the bar counts the 2 x 2 steps on stderr
    assert main([*args[:4], str(tmp_path / "quiet.safetensors"), *args[5:], "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert "epoch" not in quiet.out and "4/4" not in quiet.err


@pytest.mark.parametrize("args, message", [(["--stain-jitter", "1.5"],
                                            "--stain-jitter: must be a finite number in [0, 1]"),
                                           (["--family", "layering", "--elastic", "0.5"],
                                            "elastic deformation is not implemented for the layering family")])
def test_train_refuses_bad_augmentation_options(toy_split, worm_split, tmp_path, capsys, args, message):
    data = worm_split if "layering" in args else toy_split
    out = tmp_path / "never.safetensors"
    assert main(["train", "--data", str(data), "--out", str(out), "--workdir", str(tmp_path / "w"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture
def worm_split(tmp_path):
    """Synthetic crossing worms with exact overlapping masks (``*_instances.npz``), as in BBBC010."""
    from napari_instance_tuner.core.synthetic import synthetic_worms

    split = tmp_path / "worms" / "train"
    (split / "images").mkdir(parents=True)
    (split / "labels").mkdir()
    for i in range(3):
        image, labels, masks = synthetic_worms((64, 80), seed=i)
        tifffile.imwrite(split / "images" / f"w{i}.tif", image)
        tifffile.imwrite(split / "labels" / f"w{i}.tif", labels.astype(np.uint16))
        np.savez_compressed(split / "labels" / f"w{i}_instances.npz", masks=masks)
    return split


def tiny_layering_args(data, out, workdir, phases=(0, 1), steps=1) -> list[str]:
    """``train`` arguments for a tiny layering U-Net (base 4, depth 2, N = 4) on ``data``, without auto-tuning."""
    return ["train", "--family", "layering", "--data", str(data), "--out", str(out), "--epochs", str(sum(phases)),
            "--phase1-epochs", str(phases[0]), "--phase2-epochs", str(phases[1]), "--steps-per-epoch", str(steps),
            "--base-channels", "4", "--depth", "2", "--layers", "4", "--head-channels", "4", "--crop", "32",
            "--batch-size", "2", "--pixel-scale", "1", "--val-fraction", "0.34", "--no-autotune",
            "--workdir", str(workdir), "--quiet"]


def test_layering_train_with_separated_targets_records_the_choice(worm_split, tmp_path):
    ckpt = tmp_path / "separated.safetensors"
    args = [*tiny_layering_args(worm_split, ckpt, tmp_path / "work"), "--overlap-targets", "separated",
            "--layer-bce", "0.5", "--target-layers", "fixed"]
    assert main(args) == 0
    meta = __import__("napari_instance_tuner.core.io.checkpoint", fromlist=["x"]).read_metadata(ckpt)
    assert meta["training"]["layering"]["separate_targets"] is True
    assert meta["training"]["layering"]["layer_bce_weight"] == 0.5
    assert meta["training"]["layering"]["fixed_targets"] is True
    with np.load(tmp_path / "work" / "separated.resume.phase2-layers.npz") as saved:  # kept for a resumed phase 2
        assert len(saved.files) == 2 and all(saved[k].dtype == np.int64 for k in saved.files)
    assert [r["phase"] for r in meta["training"]["history"]] == [2]


def test_resuming_a_phase_2_with_fixed_target_layers_it_did_not_start_with_is_refused(worm_split, tmp_path, capsys):
    ckpt = tmp_path / "run.safetensors"
    args = tiny_layering_args(worm_split, ckpt, tmp_path / "work")
    assert main(args) == 0
    ckpt.rename(tmp_path / "first.safetensors")
    assert main([*args, "--target-layers", "fixed"]) == 2  # its S would come from the wrong weights
    assert "started without fixed target layers" in capsys.readouterr().err
    assert not ckpt.exists() and not (tmp_path / "work" / "run.resume.phase2-layers.npz").exists()


@pytest.mark.skipif(not bfloat16_supported("cpu"), reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
def test_layering_train_with_amp_records_it(worm_split, tmp_path):
    ckpt = tmp_path / "amp.safetensors"
    assert main([*tiny_layering_args(worm_split, ckpt, tmp_path / "work", phases=(1, 1)), "--amp"]) == 0
    meta = __import__("napari_instance_tuner.core.io.checkpoint", fromlist=["x"]).read_metadata(ckpt)
    assert meta["training"]["optimiser"]["amp"] is True
    assert [r["phase"] for r in meta["training"]["history"]] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in meta["training"]["history"])


def test_train_refuses_amp_for_a_family_that_trains_in_float32_only(toy_split, tmp_path, capsys, monkeypatch):
    from napari_instance_tuner.core.registry import get_family

    monkeypatch.setattr(type(get_family("maskrcnn")), "supports_amp", False)
    out = tmp_path / "never.safetensors"
    assert main(["train", "--family", "maskrcnn", "--data", str(toy_split), "--out", str(out), "--amp"]) == 2
    assert "maskrcnn trains in float32" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(not bfloat16_supported("cpu"), reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
def test_maskrcnn_train_with_amp_records_it(toy_split, tmp_path):
    ckpt = tmp_path / "det-amp.safetensors"
    args = ["train", "--family", "maskrcnn", "--data", str(toy_split), "--out", str(ckpt), "--epochs", "1",
            "--steps-per-epoch", "2", "--base-channels", "4", "--crop", "32", "--batch-size", "1",
            "--pixel-scale", "1", "--val-fraction", "0.25", "--no-autotune", "--anchor-sizes", "4,8,16,32,64",
            "--amp", "--workdir", str(tmp_path / "work"), "--quiet"]
    assert main(args) == 0
    meta = __import__("napari_instance_tuner.core.io.checkpoint", fromlist=["x"]).read_metadata(ckpt)
    assert meta["training"]["optimiser"]["amp"] is True
    assert all(np.isfinite(r["loss"]) for r in meta["training"]["history"])


@pytest.mark.parametrize("option, value, message", [("--layer-bce", "-1", "--layer-bce must be"),
                                                    ("--layer-bce", "nan", "--layer-bce must be"),
                                                    ("--ema", "1.5", "ema_decay must be in [0, 1)"),
                                                    ("--lr-decay-from", "100000", "decay must start at an epoch"),
                                                    ("--lr-decay-from", "0", "not available for the layering family")])
def test_train_rejects_bad_option_values_with_a_message(worm_split, tmp_path, capsys, option, value, message):
    out = tmp_path / "never.safetensors"
    args = ["train", "--family", "layering", "--data", str(worm_split), "--out", str(out), option, value]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_layering_train_predict_evaluate(worm_split, tmp_path, capsys):
    ckpt = tmp_path / "layers.safetensors"
    args = ["train", "--family", "layering", "--data", str(worm_split), "--out", str(ckpt), "--epochs", "3",
            "--phase1-epochs", "2", "--phase2-epochs", "1", "--steps-per-epoch", "2", "--base-channels", "4",
            "--depth", "2", "--layers", "4", "--head-channels", "4", "--crop", "32", "--batch-size", "2",
            "--pixel-scale", "1", "--validate-every", "1", "--val-fraction", "0.34",
            "--workdir", str(tmp_path / "work"), "--quiet"]
    assert main(args) == 0
    meta = __import__("napari_instance_tuner.core.io.checkpoint", fromlist=["x"]).read_metadata(ckpt)
    assert meta["family"] == "layering" and meta["architecture"]["n_layers"] == 4
    assert [r["phase"] for r in meta["training"]["history"]] == [1, 1, 2]
    assert meta["training"]["layering"]["separate_targets"] is False  # the paper's target stack by default
    assert meta["training"]["layering"]["layer_bce_weight"] == 0.0  # and the paper's loss
    assert meta["training"]["layering"]["fixed_targets"] is False
    assert "mean_ap" in meta["metrics"]["validation"]["all"] and "autotune" in meta["training"]
    assert (tmp_path / "work" / "layers.resume.phase1.pt").is_file()
    assert (tmp_path / "work" / "layers.resume.phase2.pt").is_file()
    out_dir = tmp_path / "pred"
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"threshold": 0.0, "min_size": 0}))  # everything foreground: >= 1 object
    assert main(["predict", "--model", str(ckpt), "--params", str(params), "--out", str(out_dir),
                 str(worm_split / "images" / "w0.tif")]) == 0
    stack = np.load(out_dir / "w0_instances.npz")  # the objects packed in label planes (core/io/mask_stack.py)
    labels = tifffile.imread(out_dir / "w0.tif")
    assert stack["planes"].dtype == np.uint32 and stack["planes"].shape[1:] == labels.shape == (64, 80)
    objects, ids, _ = read_mask_stack(out_dir / "w0_instances.npz")
    assert len(objects) == len(ids) == labels.max() >= 1
    np.testing.assert_array_equal(objects.union(), labels > 0)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(ckpt), "--data", str(worm_split)]) == 0
    printed = capsys.readouterr().out
    for row in ("AP@0.5", "AP@0.6", "AP@0.7", "AP@0.8", "AP@0.9", "mean AP", "AJI"):
        assert row in printed


def test_maskrcnn_train_predict(toy_split, tmp_path):
    ckpt = tmp_path / "det.safetensors"
    args = ["train", "--family", "maskrcnn", "--data", str(toy_split), "--out", str(ckpt), "--epochs", "2",
            "--steps-per-epoch", "1", "--base-channels", "4", "--crop", "32", "--batch-size", "1",
            "--pixel-scale", "1", "--validate-every", "1", "--val-fraction", "0.25", "--no-autotune",
            "--anchor-sizes", "4,8,16,32,64", "--biased-training", "--workdir", str(tmp_path / "work"), "--quiet"]
    assert main(args) == 0
    meta = __import__("napari_instance_tuner.core.io.checkpoint", fromlist=["x"]).read_metadata(ckpt)
    assert meta["family"] == "maskrcnn" and meta["architecture"]["anchor_sizes"] == [4, 8, 16, 32, 64]
    assert meta["training"]["maskrcnn"]["biased_training"] is True
    assert "dsb_score" in meta["metrics"]["validation"]["all"]
    out_dir = tmp_path / "pred"
    assert main(["predict", "--model", str(ckpt), "--out", str(out_dir), str(toy_split / "images" / "img0.png")]) == 0
    assert tifffile.imread(out_dir / "img0.tif").shape == (48, 64)


def test_user_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage!garbage!")
    assert main(["predict", "--model", str(bad), "--out", str(tmp_path), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.safetensors" in err and "Traceback" not in err
    assert main(["evaluate", "--model", "no-such-model", "--data", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_models_lists_shipped_weights(capsys):
    from napari_instance_tuner.core.io.checkpoint import shipped_models

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in shipped_models())


def test_finetune_and_autotune_commands(toy_split, tiny_checkpoint, tmp_path, capsys):
    from napari_instance_tuner.core.io.checkpoint import read_checkpoint

    tuned = tmp_path / "tuned.safetensors"
    assert main(["finetune", "--model", str(tiny_checkpoint), "--data", str(toy_split), "--out", str(tuned),
                 "--steps", "3", "--batch-size", "2", "--crop", "32"]) == 0
    _, meta = read_checkpoint(tuned)
    assert len(meta["finetune"]["history"]) == 3 and len(meta["finetune"]["data"]) == 4
    params = tmp_path / "best.json"
    assert main(["autotune", "--model", str(tuned), "--data", str(toy_split), "--metric", "object_dice",
                 "--out", str(params)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    before, after = (float(v) for v in line.split(":")[1].split("on")[0].split("->"))
    assert after >= before
    best = json.loads(params.read_text())["postprocess"]
    assert set(best) >= {"fg_threshold", "min_size"}
    # The written parameters are accepted by predict.
    assert main(["predict", "--model", str(tuned), "--params", str(params), "--out", str(tmp_path / "p"),
                 str(toy_split / "images" / "img0.png")]) == 0
    assert main(["autotune", "--model", str(tuned), "--data", str(toy_split), "--out", str(params)]) == 2


def test_bad_architecture_options_are_one_line_errors(toy_split, tmp_path, capsys):
    base = ["train", "--data", str(toy_split), "--out", str(tmp_path / "m.safetensors"), "--epochs", "1",
            "--workdir", str(tmp_path / "w"), "--quiet"]
    assert main([*base, "--family", "layering", "--arch-json", '{"no_such_key": 1}']) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert main([*base, "--arch-json", "[1, 2"]) == 2
    assert "--arch-json" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_export_model_then_predict_with_the_package(tiny_checkpoint, tmp_path, capsys):
    """export-model writes a checked package; predict --model PACKAGE writes the checkpoint's labels."""
    import imageio.v3 as iio

    from napari_instance_tuner.core.synthetic import synthetic_glands

    sample, unseen = tmp_path / "sample.png", tmp_path / "unseen.png"
    iio.imwrite(sample, synthetic_glands((64, 96), seed=1)[0])
    iio.imwrite(unseen, synthetic_glands((64, 80), seed=2)[0])
    package = tmp_path / "tiny.zip"
    args = ["export-model", "--model", str(tiny_checkpoint), "--out", str(package), "--sample", str(sample),
            "--author", "A. Tester", "--pixel-size", "0.5", "--no-reproduce"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote bioimage.io package {package}" in printed
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        assert "not checked" in printed
    else:
        assert "bioimageio.spec: valid-format, 0 errors" in printed
    for model, out in ((tiny_checkpoint, tmp_path / "a"), (package, tmp_path / "b")):
        assert main(["predict", "--model", str(model), "--out", str(out), str(unseen), "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a" / "unseen.tif"),
                                  tifffile.imread(tmp_path / "b" / "unseen.tif"))
    # The recipe written with the package names it by its weights' hash and replays it.
    assert main(["predict", "--recipe", str(tmp_path / "b" / "recipe.json"), "--out", str(tmp_path / "c"),
                 str(unseen), "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a" / "unseen.tif"),
                                  tifffile.imread(tmp_path / "c" / "unseen.tif"))
    assert main(args) == 0  # a zip is replaced; a non-empty folder is refused
    assert main(args[:4] + [str(tmp_path / "a")] + args[5:]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_split_seed_keeps_the_validation_images_of_another_training_seed(toy_split, tmp_path):
    from napari_instance_tuner.core.io.checkpoint import read_metadata
    from napari_instance_tuner.core.training.data import validation_split

    names = [f"img{i}" for i in range(4)]
    seed = next(s for s in range(1, 50) if validation_split(names, 0.25, s) != validation_split(names, 0.25, 0))
    val = {}
    for run_name, extra in (("kept", ["--split-seed", "0"]), ("own", [])):
        ckpt = tmp_path / f"{run_name}.safetensors"
        args = ["train", "--data", str(toy_split), "--out", str(ckpt), "--epochs", "1", "--steps-per-epoch", "1",
                "--base-channels", "4", "--depth", "2", "--crop", "32", "--batch-size", "2", "--pixel-scale", "1",
                "--val-fraction", "0.25", "--workdir", str(tmp_path / run_name), "--quiet", "--no-autotune",
                "--seed", str(seed), *extra]
        assert main(args) == 0
        val[run_name] = read_metadata(ckpt)["training"]["val_images"]
    assert val["kept"] == validation_split(names, 0.25, 0)[1]
    assert val["own"] == validation_split(names, 0.25, seed)[1] != val["kept"]
