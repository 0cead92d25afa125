"""The command line against bad inputs: every case ends in success or one clear line, nothing of the user's is
lost or replaced, and a killed run leaves no partial output at a final path.

Most cases run in-process through ``main([...])`` (fast); a few run the real console entry point in a
subprocess, including kills during writes.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_instance_tuner.cli import build_parser, main


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_arch, disks_labels, tiny_meta):
    """A tiny checkpoint, an annotated split, images of many kinds and bad files, made once for the module."""
    import imageio.v3 as iio
    import torch

    from napari_instance_tuner.core.io.checkpoint import save_checkpoint
    from napari_instance_tuner.core.registry import get_family

    root = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    state = get_family("three-branch").build_model(tiny_arch).state_dict()
    model = save_checkpoint(root / "tiny.safetensors", state, tiny_meta())
    save_checkpoint(root / "flat.safetensors", state, tiny_meta(pixel_scale=0))
    rng = np.random.default_rng(0)
    split = root / "split"
    (split / "images").mkdir(parents=True)
    (split / "labels").mkdir()
    for i in range(2):
        labels = disks_labels((40, 48), ((12, 12 + i), (26, 34)), 7)
        image = (np.stack([(labels > 0) * 120] * 3, -1) + rng.integers(0, 80, (40, 48, 3))).astype(np.uint8)
        iio.imwrite(split / "images" / f"img{i}.png", image)
        tifffile.imwrite(split / "labels" / f"img{i}.tif", labels.astype(np.uint16))
    files = root / "files"
    files.mkdir()
    tifffile.imwrite(files / "rgb.tif", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    iio.imwrite(files / "grey.png", rng.integers(0, 255, (40, 48), dtype=np.uint8))
    tifffile.imwrite(files / "two.tif", rng.integers(0, 255, (40, 48, 2), dtype=np.uint8))
    (files / "text.png").write_text("this is not an image\n")
    with pytest.warns(UserWarning):
        tifffile.imwrite(files / "empty.tif", np.zeros((0, 0), np.uint8))
    tifffile.imwrite(files / "bomb.tif", np.zeros((64, 64), np.uint8), tile=(32, 32), compression="zlib")
    with tifffile.TiffFile(files / "bomb.tif", mode="r+b") as tif:  # a tiny file declaring 100000 x 100000
        tif.pages[0].tags["ImageWidth"].overwrite(100_000)
        tif.pages[0].tags["ImageLength"].overwrite(100_000)
    params = {
        "missing": root / "nope.json", "folder": split, "empty": root / "empty.json", "binary": root / "bin.json",
        "invalid": root / "invalid.json", "list": root / "list.json", "infinity": root / "inf.json",
    }
    params["empty"].write_text("")
    params["binary"].write_bytes(bytes(range(256)))
    params["invalid"].write_text("{fg_threshold: 0.5")
    params["list"].write_text("[0.5, 3]")
    params["infinity"].write_text('{"min_size": Infinity}')
    return {"root": root, "model": model, "split": split, "files": files, "params": params}


def bad_split(root: Path, name: str, labels: np.ndarray, npz: bytes | None = None) -> Path:
    """A one-image split whose label file holds ``labels`` (and an ``_instances.npz`` of bytes ``npz``)."""
    split = root / name
    (split / "images").mkdir(parents=True, exist_ok=True)
    (split / "labels").mkdir(exist_ok=True)
    tifffile.imwrite(split / "images" / "a.tif", np.full((16, 16, 3), 100, np.uint8))
    tifffile.imwrite(split / "labels" / "a.tif", labels)
    if npz is not None:
        (split / "labels" / "a_instances.npz").write_bytes(npz)
    return split


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, code: int, expected_code: int, *needles: str) -> None:
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith(("error:", "napari-instance-tuner")) and "error" in lines[-1], err
    assert [line for line in lines if "error" in line] == [lines[-1]], err
    for needle in needles:
        assert needle in err, (needle, err)


PARAM_CASES = [("missing", "does not exist"), ("folder", "is a folder"), ("empty", "is empty"),
               ("binary", "not text"), ("invalid", "not valid JSON"), ("list", "holds a JSON list"),
               ("infinity", "not valid JSON")]


@pytest.mark.parametrize("command", ["predict", "evaluate", "autotune"])
def test_every_malformed_params_file_is_one_line(world, tmp_path, capsys, command):
    base = {"predict": ["predict", "--out", tmp_path / "out", world["files"] / "rgb.tif"],
            "evaluate": ["evaluate", "--data", world["split"]],
            "autotune": ["autotune", "--data", world["split"], "--out", tmp_path / "best.json"]}[command]
    for kind, needle in PARAM_CASES:
        code, _, err = run_cli(capsys, [*base, "--model", world["model"], "--params", world["params"][kind]])
        assert_one_line_error(err, code, 2, needle, str(world["params"][kind].name))
    assert list(tmp_path.iterdir()) == []  # nothing written, not even an empty output folder


def test_predict_outputs_never_replace_inputs_or_user_files(world, tmp_path, capsys):
    model = world["model"]
    folder = tmp_path / "in"
    folder.mkdir()
    original = world["files"].joinpath("rgb.tif").read_bytes()
    (folder / "rgb.tif").write_bytes(original)
    code, _, err = run_cli(capsys, ["predict", "--model", model, "--out", folder, "--overwrite", folder / "rgb.tif"])
    assert_one_line_error(err, code, 2, "would replace the input")
    assert (folder / "rgb.tif").read_bytes() == original and sorted(p.name for p in folder.iterdir()) == ["rgb.tif"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "rgb.tif").write_bytes(b"my own notes")  # a file of the user's with an output's name
    code, _, err = run_cli(capsys, ["predict", "--model", model, "--out", out, world["files"] / "rgb.tif"])
    assert_one_line_error(err, code, 2, "--overwrite")
    assert (out / "rgb.tif").read_bytes() == b"my own notes" and not (out / "recipe.json").exists()
    code, _, err = run_cli(capsys, ["predict", "--model", model, "--out", out / "rgb.tif", world["files"] / "rgb.tif"])
    assert_one_line_error(err, code, 2, "is a file")
    # With --overwrite the user's file is replaced; a second run redoes only what changed (resume still works).
    assert run_cli(capsys, ["predict", "--model", model, "--out", out, "--overwrite", world["files"] / "rgb.tif"])[0] == 0
    assert tifffile.imread(out / "rgb.tif").shape == (40, 48)
    code, printed, _ = run_cli(capsys, ["predict", "--model", model, "--out", out, world["files"] / "rgb.tif"])
    assert code == 0 and "1 skipped" in printed


def test_two_runs_into_one_folder_keep_a_recipe_for_every_label_file(world, tmp_path, capsys):
    out = tmp_path / "out"
    loose = tmp_path / "loose.json"
    loose.write_text(json.dumps({"fg_threshold": 0.1}))
    assert run_cli(capsys, ["predict", "--model", world["model"], "--out", out, world["files"] / "rgb.tif"])[0] == 0
    assert run_cli(capsys, ["predict", "--model", world["model"], "--params", loose, "--out", out,
                            world["files"] / "grey.png"])[0] == 0
    from napari_instance_tuner.core.inference.batch import recipe_key

    for stem in ("rgb", "grey"):
        side = json.loads((out / f"{stem}.tuner.json").read_text())
        recipe = json.loads((out / side["recipe"]).read_text())
        assert recipe_key(recipe) == side["recipe_sha256"]
    assert json.loads((out / "rgb.tuner.json").read_text())["recipe"] == "recipe.json"
    assert json.loads((out / "grey.tuner.json").read_text())["recipe"] != "recipe.json"


def test_a_second_run_into_a_busy_folder_is_refused(world, tmp_path, capsys):
    from napari_instance_tuner.core.inference.batch_folder import folder_lock

    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out):  # as another process's run would hold it
        code, _, err = run_cli(capsys, ["predict", "--model", world["model"], "--out", out, world["files"] / "rgb.tif"])
    assert_one_line_error(err, code, 2, "another run is writing into")
    assert [p.name for p in out.iterdir()] == [".napari-instance-tuner.lock"]


def test_bad_images_fail_alone_with_a_message_and_no_recipe(world, tmp_path, capsys):
    files = world["files"]
    out = tmp_path / "out"
    code, printed, err = run_cli(capsys, ["predict", "--model", world["model"], "--out", out, "--workers", "0",
                                          files / "text.png",
                                          files / "empty.tif", files / "bomb.tif", files / "two.tif"])
    assert code == 2 and "Traceback" not in err
    assert "4 failed" in printed and not (out / "recipe.json").exists()
    for needle in ("text.png' is not a readable .png file", "empty.tif' is empty", "decompression bomb",
                   "2 channels; the model expects RGB (3 channels)"):
        assert needle in err, (needle, err)
    # A good image in the same batch is still done; grey meets an RGB model with a note.
    code, printed, err = run_cli(capsys, ["predict", "--model", world["model"], "--out", out, "--workers", "0",
                                          files / "empty.tif", files / "grey.png"])
    assert code == 2 and "1 done" in printed and (out / "grey.tif").is_file() and (out / "recipe.json").is_file()
    assert "note: grey.png: grey image converted to RGB" in err


def test_whole_image_size_limit(world, tmp_path, capsys):
    big = tmp_path / "big.tif"
    tifffile.imwrite(big, np.zeros((8200, 8200), np.uint8), compression="zlib", tile=(512, 512))
    code, _, err = run_cli(capsys, ["predict", "--model", world["model"], "--out", tmp_path / "o", "--tile", "0",
                                    "--quiet", big])
    assert code == 2 and "megapixels processed in one piece" in err and "--tile" in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["predict", "--tile", "-1"], "--tile: must be a whole number"),
        (["predict", "--halo", "99999"], "--halo: must be a whole number"),
        (["predict", "--workers", "-2"], "--workers"),
        (["predict", "--threads-per-worker", "0"], "--threads-per-worker"),
        (["predict", "--network-tile", "abc"], "expected a whole number"),
        (["predict", "--tile", "64", "--halo", "512"], "larger than --tile"),
        (["finetune", "--steps", "0"], "--steps"),
        (["finetune", "--lr", "-0.001"], "--lr: must be a finite number"),
        (["finetune", "--lr", "nan"], "--lr"),
        (["train", "--pixel-scale", "0"], "--pixel-scale"),
        (["train", "--crop", "4"], "--crop"),
    ],
)
def test_out_of_range_options_are_usage_errors(world, tmp_path, capsys, argv, needle):
    required = {"predict": ["--model", world["model"], "--out", tmp_path / "o", world["files"] / "rgb.tif"],
                "finetune": ["--model", world["model"], "--data", world["split"], "--out", tmp_path / "f.safetensors"],
                "train": ["--data", world["split"], "--out", tmp_path / "t.safetensors"]}[argv[0]]
    code, _, err = run_cli(capsys, [*argv, *required])
    assert_one_line_error(err, code, 2, needle)
    assert list(tmp_path.iterdir()) == []


def test_bad_labels_weights_and_data_folders(world, tmp_path, capsys):
    root, model = tmp_path, world["model"]
    cases = [
        (bad_split(root, "negative", np.full((16, 16), -3, np.int16)), "negative ids"),
        (bad_split(root, "nan", np.full((16, 16), np.nan, np.float32)), "non-integer values"),
        (bad_split(root, "huge", np.full((16, 16), 2**40, np.int64)), "beyond 2147483647"),
        (bad_split(root, "shape", np.zeros((8, 16), np.uint16)), "is 8 x 16, its image 16 x 16"),
        (bad_split(root, "npz", np.zeros((16, 16), np.uint16), b"PK\x03\x04corrupt"), "a_instances.npz"),
        (root / "no-such-folder", "does not exist"),
        (world["files"] / "rgb.tif", "is a file"),
        (root, "has no images/ or labels/ folder"),
    ]
    for data, needle in cases:
        code, _, err = run_cli(capsys, ["evaluate", "--model", model, "--data", data])
        assert_one_line_error(err, code, 2, needle)
        code, _, err = run_cli(capsys, ["finetune", "--model", model, "--data", data, "--out", root / "ft.safetensors"])
        assert_one_line_error(err, code, 2, needle)
    assert not (root / "ft.safetensors").exists()
    pth = root / "evil.pth"
    import torch

    torch.save({"w": torch.zeros(2), "f": os.getcwd}, pth)  # a global a pickle would look up
    for weights, needle in ((world["root"] / "flat.safetensors", "pixel_scale 0"), (pth, "pickle"),
                            (world["files"] / "text.png", "not a safetensors file")):
        code, _, err = run_cli(capsys, ["evaluate", "--model", weights, "--data", world["split"]])
        assert_one_line_error(err, code, 2, needle)
        assert "weights_only=False" not in err


def test_a_corrupt_resume_file_is_one_line(world, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "m.resume.pt").write_bytes(b"PK\x03\x04 not a zip archive at all")
    out = tmp_path / "m.safetensors"
    code, _, err = run_cli(capsys, ["train", "--data", world["split"], "--out", out, "--epochs", "1",
                                    "--steps-per-epoch", "1", "--base-channels", "4", "--depth", "2", "--crop", "32",
                                    "--batch-size", "1", "--val-fraction", "0.5", "--workdir", work, "--quiet"])
    assert_one_line_error(err, code, 2, "m.resume.pt", "delete it")
    assert not out.exists()


def test_existing_outputs_are_refused_before_any_work(world, tmp_path, capsys):
    model, split = world["model"], world["split"]
    for name in ("ft.safetensors", "t.safetensors", "m.json", "best.json"):
        (tmp_path / name).write_text("precious")
    commands = [
        ["finetune", "--model", model, "--data", split, "--out", tmp_path / "ft.safetensors", "--steps", "100000"],
        ["train", "--data", split, "--out", tmp_path / "t.safetensors", "--epochs", "100000"],
        ["evaluate", "--model", model, "--data", split, "--json", tmp_path / "m.json"],
        ["autotune", "--model", model, "--data", split, "--out", tmp_path / "best.json"],
    ]
    for argv in commands:
        start = time.perf_counter()
        code, _, err = run_cli(capsys, argv)
        assert_one_line_error(err, code, 2, "exists; pass --overwrite")
        assert time.perf_counter() - start < 5  # refused before the work (100000 steps would take hours)
    assert all((tmp_path / n).read_text() == "precious" for n in ("ft.safetensors", "t.safetensors", "m.json", "best.json"))
    code, _, err = run_cli(capsys, ["finetune", "--model", model, "--data", split, "--out", model, "--overwrite"])
    assert_one_line_error(err, code, 2, "is an input")
    (tmp_path / "blocker").write_text("a file where a folder should be")
    code, _, err = run_cli(capsys, ["evaluate", "--model", model, "--data", split, "--json", tmp_path / "blocker" / "m.json"])
    assert_one_line_error(err, code, 2, "is a file, not a folder")


def test_finetune_and_evaluate_write_complete_files_with_the_umask(world, tmp_path, capsys):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "ft.safetensors"
        assert run_cli(capsys, ["finetune", "--model", world["model"], "--data", world["split"], "--out", out,
                                "--steps", "1", "--batch-size", "1", "--crop", "32", "--quiet"])[0] == 0
        report = tmp_path / "m.json"
        code, _, err = run_cli(capsys, ["evaluate", "--model", out, "--data", world["split"], "--json", report])
        assert code == 0 and "evaluate" in err  # the progress bar
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 and stat.S_IMODE(report.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft.safetensors", "m.json"]  # no temporaries left


def test_a_full_disk_leaves_no_partial_file(world, tmp_path, capsys, monkeypatch):
    import errno

    from napari_instance_tuner.core.io import safe_write

    class Full:
        def __init__(self, path, mode):
            self.fh = open(path, mode)  # noqa: SIM115 - closed in __exit__

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(safe_write, "open", Full, raising=False)
    code, _, err = run_cli(capsys, ["evaluate", "--model", world["model"], "--data", world["split"], "--json",
                                    tmp_path / "m.json", "--quiet"])
    assert_one_line_error(err, code, 2, "No space left on device", "m.json")
    assert list(tmp_path.iterdir()) == []


def test_recipe_weights_are_found_by_name_only(world, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(capsys, ["predict", "--model", world["model"], "--out", out, "--quiet", world["files"] / "rgb.tif"])[0] == 0
    recipe = json.loads((out / "recipe.json").read_text())
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    recipe["weights"].update(path=str(secret), file="../../secret.txt")
    evil = tmp_path / "evil.json"
    evil.write_text(json.dumps(recipe))
    code, _, err = run_cli(capsys, ["predict", "--recipe", evil, "--out", tmp_path / "o2", world["files"] / "rgb.tif"])
    assert_one_line_error(err, code, 2, "were not found")
    assert "secret" not in err and "SHA-256" not in err


def test_help_texts_are_complete_and_plain(capsys):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in subparsers.choices.items():
        if name == "demo":
            continue
        assert "examples:" in (sub.epilog or ""), name
        for action in sub._actions:
            assert action.help and "``" not in action.help, (name, action.dest)
    assert main(["predict", "--help"]) == 0
    assert "--overwrite" in capsys.readouterr().out


def test_debug_shows_the_traceback(world, tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        main(["--debug", "evaluate", "--model", str(world["model"]), "--data", str(tmp_path / "none")])


# -- the real entry point in subprocesses: one-line errors, kills during writes ----------------------------------


def cli(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                       os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "napari_instance_tuner.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_the_console_entry_point_prints_one_line(world, tmp_path):
    proc = cli("predict", "--model", world["model"], "--params", world["params"]["infinity"], "--out", tmp_path / "o",
               world["files"] / "rgb.tif")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.decode().strip().startswith("error:") and b"Traceback" not in err
    assert len(err.decode().strip().splitlines()) == 1


def _wait_for(predicate, proc, timeout=120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_streamed_predict_leaves_no_partial_output(world, tmp_path, sig):
    big = tmp_path / "big.tif"
    rng = np.random.default_rng(1)
    tifffile.imwrite(big, rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8), tile=(64, 64))
    out = tmp_path / "out"
    args = ("predict", "--model", world["model"], "--out", out, "--tile", "64", "--halo", "16", "--quiet", big)
    proc = cli(*args)
    _wait_for(lambda: out.is_dir() and any(p.name.startswith(".big.zarr.") for p in out.iterdir()), proc)
    time.sleep(0.1)  # a few tiles go into the temporary folder (256 in all: far from done, even on ONNX Runtime)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (-9 if sig == signal.SIGKILL else 143), err.decode()[-2000:]
    assert b"Traceback" not in err
    names = {p.name for p in out.iterdir()}
    assert not {"big.zarr", "recipe.json", "big.tuner.json"} & names
    if sig == signal.SIGTERM:
        assert not [n for n in names if n.endswith(".tmp")]  # cleaned up on the way out
        return
    again = cli(*args)  # a rerun completes and removes what the kill left
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()[-2000:]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".napari")) == \
        ["big.tuner.json", "big.zarr", "recipe.json"]


def test_a_killed_finetune_leaves_no_weights_file(world, tmp_path):
    import threading

    out = tmp_path / "ft.safetensors"
    proc = cli("finetune", "--model", world["model"], "--data", world["split"], "--out", out, "--steps", "100000",
               "--batch-size", "1", "--crop", "32")
    seen = threading.Event()
    chunks: list[bytes] = []

    def read() -> None:
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            chunks.append(chunk)
            if b"fine-tune" in b"".join(chunks[-2:]):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert seen.wait(120), b"".join(chunks).decode()[-2000:]  # the progress bar: training has started
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    proc.stdout.close()
    proc.stderr.close()
    assert list(tmp_path.iterdir()) == []
