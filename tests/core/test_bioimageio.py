"""bioimage.io packages: export, check with bioimageio.spec/core, import (round trip and foreign packages)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import yaml

from napari_instance_tuner.core.errors import InstanceTunerError, WeightsError
from napari_instance_tuner.core.io.bioimageio_export import PackageInfo, export_package
from napari_instance_tuner.core.io.bioimageio_import import is_package
from napari_instance_tuner.core.io.checkpoint import load_model, read_metadata
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.registry import family_names
from napari_instance_tuner.core.synthetic import synthetic_glands, synthetic_nuclei

#: Every registered family (each has a tiny architecture in the ``tiny_archs`` fixture).
FAMILIES = family_names()


def _image(family: str, seed: int) -> np.ndarray:
    if family == "maskrcnn":
        return synthetic_nuclei((96, 96), seed=seed)[0]
    return synthetic_glands((80, 112), seed=seed)[0]


def _labels(loaded, image: np.ndarray) -> np.ndarray:
    maps = run(loaded.family.predict_maps(loaded.model, image, loaded.meta))
    return loaded.family.postprocess(maps, loaded.family.default_params(loaded.meta)).labels


@pytest.fixture(scope="module")
def packages(tmp_path_factory, tiny_loaded):
    """family -> (original LoadedModel, exported .zip), tiny random-weight models."""
    folder = tmp_path_factory.mktemp("bioimageio")
    out = {}
    for family in FAMILIES:
        loaded = tiny_loaded(family, folder)
        out[family] = loaded, export_package(loaded, _image(family, 0), folder / f"{family}.zip",
                                             PackageInfo(pixel_size=0.5, authors=["A. Tester"],
                                                         sample_name="a sample named " + "x" * 200))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_export_writes_a_complete_package(packages, family):
    loaded, path = packages[family]
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        test_input = np.load(io.BytesIO(zf.read("test_input.npy")))
        test_output = np.load(io.BytesIO(zf.read("test_output.npy")))
        architecture = zf.read("architecture.py").decode()
        readme = zf.read("README.md").decode()
    network = loaded.family.package_network(loaded.meta)
    assert {"rdf.yaml", "weights.pt", "architecture.py", "test_input.npy", "test_output.npy", "cover.png",
            "README.md"} <= names
    assert ("weights.torchscript.pt" in names) == network.torchscript
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    assert rdf["config"]["napari_instance_tuner"]["meta"] == loaded.meta
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["callable"] == loaded.family.package_callable
    assert rdf["inputs"][0]["preprocessing"][0]["id"] == "scale_range"
    assert rdf["inputs"][0]["axes"][2]["scale"] == 0.5 and rdf["inputs"][0]["axes"][2]["unit"] == "micrometer"
    assert rdf["cite"] == list(loaded.family.citations) and rdf["authors"] == [{"name": "A. Tester"}]
    assert rdf["maintainers"] == []
    assert len(rdf["inputs"][0]["description"]) <= 128 and "x" * 200 in readme  # the spec's limit; name in README
    assert {"sample_input.tif", "sample_output.tif"} <= names
    # Test tensors at network scale, a multiple of the size step; outputs are probabilities.
    assert test_input.dtype == np.float32 and test_input.shape[:2] == (1, network.in_channels)
    assert test_input.shape[2] % network.size_step == 0
    assert test_output.shape == (1, len(network.channels)) + test_input.shape[2:]
    assert 0.0 <= test_output.min() and test_output.max() <= 1.0
    # The architecture file needs torch (and torchvision), not this plugin, when it is imported.
    top_level = [line for line in architecture.splitlines() if line.startswith(("import ", "from "))]
    assert top_level and not any("napari_instance_tuner" in line for line in top_level)


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_gives_the_same_labels_on_an_unseen_image(packages, family):
    loaded, path = packages[family]
    assert is_package(path)
    again = load_model(path)
    assert again.family.name == family and again.meta == loaded.meta and read_metadata(path) == loaded.meta
    state, state_again = loaded.model.state_dict(), again.model.state_dict()
    assert all(np.array_equal(state[k].numpy(), state_again[k].numpy()) for k in state)
    unseen = _image(family, 7)
    assert np.array_equal(_labels(again, unseen), _labels(loaded, unseen))


@pytest.mark.parametrize("family", FAMILIES)
def test_packages_pass_bioimageio_spec_and_core(packages, family):
    pytest.importorskip("bioimageio.spec")
    from napari_instance_tuner.core.io.bioimageio_check import check_package

    report = check_package(packages[family][1], reproduce=True)
    assert report.errors == [] and report.format_status in ("valid-format", "passed"), report.summary()
    # A maintainer's GitHub user would silence the one warning, but the spec checks it online.
    assert [w.split(":")[0] for w in report.warnings] == ["rdf"] and "maintainers" in report.warnings[0]
    try:
        import bioimageio.core  # noqa: F401
    except ImportError:
        return
    assert report.test_status == "passed", report.summary()
    assert report.ok


def _unzip(path, folder):
    with zipfile.ZipFile(path) as zf:
        zf.extractall(folder)
    return folder


def _edit_rdf(folder, edit) -> None:
    rdf_path = folder / "rdf.yaml"
    rdf = yaml.safe_load(rdf_path.read_text())
    edit(rdf)
    rdf_path.write_text(yaml.safe_dump(rdf, sort_keys=False))


def test_folder_and_rdf_paths_load(packages, tmp_path):
    loaded, path = packages["three-branch"]
    folder = _unzip(path, tmp_path / "pkg")
    for source in (folder, folder / "rdf.yaml"):
        again = load_model(source)
        assert again.meta == loaded.meta and again.sha256 == load_model(path).sha256


def test_folder_export(packages, tmp_path):
    loaded, _ = packages["layering"]
    out = export_package(loaded, _image("layering", 1), tmp_path / "new")
    assert (out / "rdf.yaml").is_file() and load_model(out).meta == loaded.meta
    with pytest.raises(InstanceTunerError, match="not an empty folder"):
        export_package(loaded, _image("layering", 1), out)


def test_sample_smaller_than_the_network_is_refused(packages, tmp_path):
    loaded, _ = packages["three-branch"]
    with pytest.raises(InstanceTunerError, match="at least"):
        export_package(loaded, np.zeros((2, 2, 3), np.uint8), tmp_path / "x.zip")


def test_foreign_package_with_our_architecture_loads_with_defaults(packages, tmp_path):
    """A package made elsewhere (no config section) whose architecture is ours: metadata from the rdf."""
    loaded, path = packages["three-branch"]
    folder = _unzip(path, tmp_path / "foreign")

    def strip(rdf):
        del rdf["config"]
        rdf["inputs"][0]["preprocessing"][0]["kwargs"].update(min_percentile=2.0, max_percentile=98.0)

    _edit_rdf(folder, strip)
    again = load_model(folder)
    assert again.family.name == "three-branch" and again.meta["architecture"] == loaded.meta["architecture"]
    assert again.meta["normalisation"] == {"kind": "percentile", "low": 2.0, "high": 98.0}
    assert again.meta["in_channels"] == 3 and again.meta["pixel_scale"] == 1.0
    assert again.family.default_params(again.meta) == again.family.default_params({})
    state = loaded.model.state_dict()
    assert all(np.array_equal(state[k].numpy(), again.model.state_dict()[k].numpy()) for k in state)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rdf: rdf["weights"].pop("pytorch_state_dict"), "no pytorch_state_dict"),
        (lambda rdf: rdf["weights"]["pytorch_state_dict"]["architecture"].update(callable="StarDist2D"),
         "none of ours"),
        (lambda rdf: rdf.update(format_version="0.4.10"), "format"),
        (lambda rdf: rdf.update(type="dataset"), "not a model"),
    ],
)
def test_unsupported_packages_say_what_is_supported(packages, tmp_path, edit, message):
    folder = _unzip(packages["three-branch"][1], tmp_path / "other")

    def foreign(rdf):
        del rdf["config"]
        edit(rdf)

    _edit_rdf(folder, foreign)
    with pytest.raises(WeightsError, match=message) as info:
        load_model(folder)
    if message in ("no pytorch_state_dict", "none of ours", "format"):
        assert "ThreeBranchMaps" in str(info.value) and "exported by napari-instance-tuner" in str(info.value)


def test_pickled_objects_in_a_package_are_refused(packages, tmp_path):
    import pickle

    folder = _unzip(packages["three-branch"][1], tmp_path / "evil")
    (folder / "weights.pt").write_bytes(pickle.dumps({"net.x": print}))
    with pytest.raises(WeightsError, match="refused|not a state dict"):
        load_model(folder)
