"""Read bioimage.io model packages (zip, folder or its ``rdf.yaml``) as one of our models.

Two kinds of packages are read:

- packages exported by this plugin (:mod:`.bioimageio_export`): ``config.napari_instance_tuner`` holds the
  checkpoint metadata, so the restored model is exactly the exported one (same weights, normalisation,
  pixel scale, tiling and post-processing parameters, hence the same labels);
- packages made by other tools whose ``pytorch_state_dict`` weights use one of our families' architectures
  (the architecture's ``callable`` is a family's :attr:`~..family.Family.package_callable` and its
  ``kwargs["architecture"]`` builds that family's network): the metadata is rebuilt from the description
  (input channels, ``scale_range`` percentiles) with pixel scale 1 and the family's default post-processing.

Anything else raises a :class:`~..errors.WeightsError` that says what is supported. Reading needs PyYAML
and torch only; weights are read with ``torch.load(weights_only=True)``, never unpickled.
"""

from __future__ import annotations

import hashlib
import io
import warnings
import zipfile
from pathlib import Path

from ..errors import WeightsError
from ..registry import family_names, get_family
from .bioimageio_network import STATE_PREFIX

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
CONFIG_KEY = "napari_instance_tuner"
SUPPORTED = (
    "napari-instance-tuner reads bioimage.io model packages (format 0.5) exported by napari-instance-tuner, and "
    "packages whose pytorch_state_dict weights use one of its architectures (callable {callables})"
)


class _Package:
    """Files of a package in a zip or a folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                self._names = set(zf.namelist())
            self._root = None
        else:
            self._root = path.parent if path.is_file() else path
            self._names = None
        self.rdf_name = path.name if path.is_file() and self._root is not None else next(
            (n for n in RDF_NAMES if self.exists(n)), None)

    def exists(self, name: str) -> bool:
        return name in self._names if self._root is None else (self._root / name).is_file()

    def read(self, name: str) -> bytes:
        if not self.exists(name):
            raise WeightsError(f"bioimage.io package {self.path.name!r} lacks the file {name!r} its rdf names")
        if self._root is None:
            with zipfile.ZipFile(self.path) as zf:
                return zf.read(name)
        return (self._root / name).read_bytes()


def is_package(path: str | Path) -> bool:
    """Whether ``path`` looks like a bioimage.io package: a zip holding an rdf, a folder with one, or the rdf."""
    path = Path(path)
    if path.is_dir():
        return any((path / n).is_file() for n in RDF_NAMES)
    if not path.is_file():
        return False
    if path.name in RDF_NAMES or path.name.endswith(".bioimageio.yaml"):
        return True
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return any(n in zf.namelist() for n in RDF_NAMES)
    return False


def _rdf(package: _Package) -> dict:
    import yaml

    if package.rdf_name is None:
        raise WeightsError(f"{package.path.name!r} holds no rdf.yaml or bioimageio.yaml")
    try:
        rdf = yaml.safe_load(package.read(package.rdf_name))
    except yaml.YAMLError as exc:
        raise WeightsError(f"the rdf of {package.path.name!r} is not valid YAML: {exc}") from None
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise WeightsError(f"{package.path.name!r} is a bioimage.io resource but not a model")
    if not str(rdf.get("format_version", "")).startswith("0.5"):
        raise WeightsError(f"{package.path.name!r} uses model format {rdf.get('format_version')!r}; "
                           + _supported() + "; update old packages with bioimageio.spec's update_format")
    return rdf


def _supported() -> str:
    callables = [get_family(n).package_callable for n in family_names()]
    return SUPPORTED.format(callables=", ".join(c for c in callables if c))


def _family_of(rdf: dict, name: str) -> tuple[str, dict]:
    """(family name, architecture kwargs) from the pytorch_state_dict weights entry."""
    weights = rdf.get("weights") or {}
    entry = weights.get("pytorch_state_dict")
    if not isinstance(entry, dict):
        raise WeightsError(f"{name!r} has weights {sorted(weights)} but no pytorch_state_dict; " + _supported())
    architecture = entry.get("architecture") or {}
    callable_name = architecture.get("callable")
    kwargs = architecture.get("kwargs") or {}
    for family in family_names():
        if get_family(family).package_callable == callable_name and isinstance(kwargs.get("architecture"), dict):
            return family, kwargs["architecture"]
    raise WeightsError(f"the architecture of {name!r} ({callable_name!r}) is none of ours; " + _supported())


def _foreign_meta(rdf: dict, family: str, architecture: dict) -> dict:
    """Checkpoint metadata rebuilt from a description without our config section."""
    inputs = rdf.get("inputs") or [{}]
    axes = inputs[0].get("axes") or []
    channel = next((a for a in axes if a.get("type") == "channel"), {"channel_names": ["c"]})
    normalisation = {"kind": "none"}
    for step in inputs[0].get("preprocessing") or []:
        if step.get("id") == "scale_range":
            kwargs = step.get("kwargs") or {}
            normalisation = {"kind": "percentile", "low": float(kwargs.get("min_percentile", 0.0)),
                             "high": float(kwargs.get("max_percentile", 100.0))}
    return {"name": rdf.get("name"), "family": family, "architecture": architecture,
            "in_channels": len(channel.get("channel_names") or []) or 1, "normalisation": normalisation,
            "pixel_scale": 1.0, "source": "bioimage.io package", "card": {"summary": rdf.get("description", "")}}


def read_package_meta(path: str | Path) -> dict:
    """The checkpoint metadata of a package (no weights read, no torch).

    Raises
    ------
    WeightsError
        If the package is unreadable or of a kind this plugin cannot use; the message says what is supported.
    """
    package = _Package(Path(path))
    rdf = _rdf(package)
    config = (rdf.get("config") or {}).get(CONFIG_KEY)
    if isinstance(config, dict) and isinstance(config.get("meta"), dict):
        return dict(config["meta"])
    family, architecture = _family_of(rdf, package.path.name)
    return _foreign_meta(rdf, family, architecture)


def _weights_bytes(package: _Package, rdf: dict) -> tuple[str, bytes]:
    _family_of(rdf, package.path.name)  # our packages too need their pytorch_state_dict entry
    source = str(rdf["weights"]["pytorch_state_dict"].get("source"))
    return source, package.read(source)


def package_sha256(path: str | Path) -> str:
    """SHA-256 of a package's state-dict weights file: the package's identity in recipes (zip or folder)."""
    package = _Package(Path(path))
    return hashlib.sha256(_weights_bytes(package, _rdf(package))[1]).hexdigest()


def read_package(path: str | Path) -> tuple[dict, dict, str]:
    """(state_dict of our bare network, checkpoint metadata, SHA-256 of the weights file) of a package.

    Raises
    ------
    WeightsError
        As :func:`read_package_meta`, and when the weights hold anything but tensors.
    """
    import pickle

    import torch

    package = _Package(Path(path))
    rdf = _rdf(package)
    meta = read_package_meta(path)
    source, data = _weights_bytes(package, rdf)
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": noise before a refusal
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise WeightsError(f"the weights {source!r} in {package.path.name!r} were refused (only plain state dicts "
                           f"load, weights_only=True): {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise WeightsError(f"the weights {source!r} in {package.path.name!r} are not a state dict")
    prefix = ((rdf.get("config") or {}).get(CONFIG_KEY) or {}).get("state_dict_prefix", STATE_PREFIX)
    if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state, meta, hashlib.sha256(data).hexdigest()
