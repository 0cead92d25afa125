"""The cross-fit training sets of the gland recipes (``scripts/glas_cross_fit_sets.py``), the patient folds of the
k-fold validation (``core.training.data.patient_folds``) and the recipe script's first step
(``scripts/glas_recipe_v10.sh``), on a small GlaS-like folder of empty files."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from napari_instance_tuner.core.io.checkpoint import save_checkpoint
from napari_instance_tuner.core.registry import get_family
from napari_instance_tuner.core.training.data import patient_folds

# (image id, patient, grade): glas/train has patients 1-6, glas/testA patients 5-8 (as in GlaS, the two splits
# share patients); patient sizes differ
TRAIN = [(f"train_{i}", str(1 + (i - 1) // 4), "malignant" if i % 3 else "benign") for i in range(1, 25)]
TEST_A = [(f"testA_{i}", str(5 + (i - 1) % 4), "benign" if i % 2 else "malignant") for i in range(1, 15)]


def _glas(root):
    """A GlaS-like folder: train/ and testA/ with images/*.png and labels/*.tif (empty), Grade.csv beside them."""
    for split, rows in (("train", TRAIN), ("testA", TEST_A)):
        for kind, suffix in (("images", ".png"), ("labels", ".tif")):
            (root / split / kind).mkdir(parents=True)
            for name, _, _ in rows:
                (root / split / kind / f"{name}{suffix}").write_bytes(b"")
    with open(root / "Grade.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["name", "patient ID", "grade (GlaS)"], *TRAIN, *TEST_A])
    return root


def test_patient_folds_keep_each_patient_in_one_fold_and_balance_image_counts():
    groups = {name: (patient, grade) for name, patient, grade in TRAIN}
    names = [n for n, _, _ in TRAIN]
    assert patient_folds(names, groups, None) == [[str(p)] for p in range(1, 7)]
    folds = patient_folds(names, groups, 3)
    assert sorted(p for f in folds for p in f) == sorted(str(p) for p in range(1, 7))
    sizes = [sum(groups[n][0] in f for n in names) for f in folds]
    assert sizes == [8, 8, 8]  # six patients of 4 images into three folds
    assert patient_folds(list(reversed(names)), groups, 3) == folds  # deterministic, whatever the order


def test_each_half_trains_on_run_a_and_the_other_half_and_never_on_the_images_it_segments(tmp_path, script):
    module = script("glas_cross_fit_sets")
    glas = _glas(tmp_path / "glas")
    sets, unseen, folds = module.cross_fit_sets(glas)
    patient = {name: p for name, p, _ in TRAIN + TEST_A}
    kfold = unseen["xfitA"] + unseen["xfitB"]
    assert sorted(kfold) == sorted(set(kfold)) and all(n in kfold for n, _, _ in TEST_A)
    validation = [n for n in kfold if n.startswith("train_")]
    assert validation, "some glas/train patients are held out for validation"
    run_a = [n for n, _, _ in TRAIN if n not in validation]
    for half, other in (("xfitA", "xfitB"), ("xfitB", "xfitA")):
        assert sorted(sets[half]) == sorted(run_a + unseen[other])
        trained_kfold = set(sets[half]) & set(kfold)
        assert not {patient[n] for n in trained_kfold} & {patient[n] for n in unseen[half]}  # by patient
    assert sorted(sets["all"]) == sorted(n for n, _, _ in TRAIN + TEST_A)
    assert len(folds) == 4
    assert sorted((p for f in folds for p in f), key=int) == sorted({patient[n] for n in kfold}, key=int)


def test_a_set_folder_holds_links_to_exactly_its_images_and_their_grades(tmp_path, script):
    module = script("glas_cross_fit_sets")
    glas = _glas(tmp_path / "glas")
    out = tmp_path / "glas-x"
    assert module.write_set(glas, out, ["train_1", "train_2", "testA_3"]) == 3
    assert module.write_set(glas, out, ["train_2", "testA_3"]) == 2  # train_1's links are removed
    assert sorted(p.name for p in (out / "train" / "images").iterdir()) == ["testA_3.png", "train_2.png"]
    assert sorted(p.name for p in (out / "train" / "labels").iterdir()) == ["testA_3.tif", "train_2.tif"]
    assert (out / "train" / "images" / "train_2.png").resolve() == (glas / "train" / "images" / "train_2.png").resolve()
    with open(out / "Grade.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert [r[0] for r in rows[1:]] == ["train_2", "testA_3"]
    (out / "train" / "images" / "train_2.png").unlink()
    (out / "train" / "images" / "train_2.png").write_bytes(b"mine")  # a user's file is never replaced
    with pytest.raises(SystemExit, match="not a link"):
        module.write_set(glas, out, ["train_2"])
    assert (out / "train" / "images" / "train_2.png").read_bytes() == b"mine"


def test_check_fails_when_a_models_cross_fit_record_names_other_images(tmp_path, script, tiny_arch, monkeypatch,
                                                                      capsys):
    module = script("glas_cross_fit_sets")
    glas = _glas(tmp_path / "glas")
    _, unseen, _ = module.cross_fit_sets(glas)
    model = get_family("three-branch").build_model(tiny_arch)
    meta = {"name": "tiny", "family": "three-branch", "architecture": tiny_arch, "in_channels": 3}

    def run(record) -> int:
        path = save_checkpoint(tmp_path / "m.safetensors", model.state_dict(),
                               {**meta, "training": {"cross_fit": record}})
        monkeypatch.setattr("sys.argv", ["x", str(glas), "--out", str(tmp_path / "sets"), "--check", str(path)])
        with pytest.raises(SystemExit) as exit_:
            module.main()
        return exit_.value.code

    right = [{"name": "n-xfitA", "images": unseen["xfitA"]}, {"name": "n-xfitB", "images": unseen["xfitB"]}]
    assert run(right) == 0
    swapped = [{"name": "n-xfitA", "images": unseen["xfitB"]}, {"name": "n-xfitB", "images": unseen["xfitA"]}]
    assert run(swapped) == 1
    assert "n-xfitA:" in capsys.readouterr().out


def test_the_k_fold_images_of_patients_the_networks_saw_are_counted(tmp_path, script):
    module = script("glas_cross_fit_sets")
    glas = _glas(tmp_path / "glas")
    sets, unseen, _ = module.cross_fit_sets(glas)
    patient = {name: p for name, p, _ in TRAIN + TEST_A}
    run_a = {patient[n] for n in set(sets["xfitA"]) & set(sets["xfitB"])}
    seen = [n for n in unseen["xfitA"] + unseen["xfitB"] if patient[n] in run_a]
    assert seen, "testA shares patients with run A here, as in GlaS"
    line = module.seen_patients(glas, sets, unseen)
    assert line.startswith(f"k-fold images of patients run A also holds: {len(seen)} of {len(TEST_A) + 4}")
    assert f"patient {patient[seen[0]]} " in line


def _recipe(tmp_path, *args) -> subprocess.CompletedProcess:
    """``bash scripts/glas_recipe_v10.sh ARGS`` with its outputs under ``tmp_path``."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "glas_recipe_v10.sh"
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "ck"), "RUNS": str(tmp_path / "runs")}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


def test_the_recipe_script_refuses_an_unknown_step_and_stops_when_the_sets_differ_from_v10s(tmp_path):
    glas = _glas(tmp_path / "glas")
    out = _recipe(tmp_path, str(glas), "sets", "nonsense")
    assert out.returncode == 1, out.stderr  # the sets step ran first and stopped the script
    assert "images differ" in out.stdout and "nonsense" not in out.stderr
    assert (tmp_path / "runs" / "data" / "glas-xfitA" / "train" / "images").is_dir()
    out = _recipe(tmp_path, str(glas), "nonsense")
    assert out.returncode == 2 and "unknown step: nonsense" in out.stderr
    assert not (tmp_path / "ck" / "glas-depth5.safetensors").exists()
