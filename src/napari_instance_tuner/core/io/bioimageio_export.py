"""Export a model as a bioimage.io model package (model description format 0.5).

The package (a folder or a ``.zip``) holds ``rdf.yaml``; the weights as a PyTorch state dict with the
self-contained architecture source (:mod:`.bioimageio_network`) and, where the network can be traced, as
TorchScript; test input and output tensors cut from a sample image at network scale; a cover; a README with
the model card; and, in ``config.napari_instance_tuner``, the checkpoint metadata (normalisation, pixel
scale, tiling, post-processing parameters, training record), from which :mod:`.bioimageio_import` restores
exactly the model that was exported.

Writing needs only torch, numpy and PyYAML; checking the package needs the ``bioimageio`` extra
(:mod:`.bioimageio_check`).
"""

from __future__ import annotations

import datetime
import io
import json
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InstanceTunerError
from ..inference.image import normalise, rescale, to_channels_last
from .bioimageio_network import STATE_PREFIX, PackageNetwork, bundle_source, load_bundle

#: Version of the layout of ``config.napari_instance_tuner`` (independent of the checkpoint format).
PACKAGE_FORMAT = 1
CONFIG_KEY = "napari_instance_tuner"
RDF_NAME = "rdf.yaml"
#: The rdf's format version: the bioimage.io model spec 0.5 that current consumers read.
FORMAT_VERSION = "0.5.4"
#: Edge (network pixels) of the square test tensor cut from the sample image; rounded down to the size step.
TEST_EDGE = 256


@dataclass
class PackageInfo:
    """Descriptive fields of a package that the checkpoint does not hold.

    Attributes
    ----------
    authors : list of str
        Names of the people who made the model (default: the plugin's contributors).
    maintainers : list of str
        GitHub user names of the people who answer questions about the package (bioimage.io asks for one).
    pixel_size : float or None
        Edge of one pixel of the images the model was made for, in micrometres (before ``pixel_scale``).
    license : str
        SPDX identifier of the weights' licence.
    description : str or None
        One-line description (default: the model card's summary).
    sample_name : str
        Where the sample image came from, for the documentation.
    """

    authors: list[str] = field(default_factory=lambda: ["napari-instance-tuner contributors"])
    maintainers: list[str] = field(default_factory=list)
    pixel_size: float | None = None
    license: str = "BSD-3-Clause"
    description: str | None = None
    sample_name: str = "a sample image"


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def package_wrapper(network: PackageNetwork, architecture: dict, state_dict: dict):
    """The package's entry point built from its bundled source, holding ``state_dict`` (eval mode, float32).

    Returns
    -------
    source : str
        The ``architecture.py`` text.
    wrapper : torch.nn.Module
        Maps a normalised float32 (B, C, H, W) batch to the output tensor (see :mod:`.bioimageio_network`).
    """
    source = bundle_source(network)
    module = load_bundle(source)
    wrapper = getattr(module, network.callable)(architecture=architecture)
    wrapper.load_state_dict({STATE_PREFIX + k: v.float() for k, v in state_dict.items()})
    return source, wrapper.eval()


def test_crop(image: np.ndarray, meta: dict, network: PackageNetwork) -> np.ndarray:
    """The package's test input: ``image`` at network scale, a central square crop, before normalisation.

    Parameters
    ----------
    image : np.ndarray
        (H, W) or (H, W, C), any real dtype.

    Returns
    -------
    np.ndarray
        float32 (1, C, e, e), e a multiple of ``network.size_step`` and at most :data:`TEST_EDGE`.

    Raises
    ------
    InstanceTunerError
        If the image at network scale is smaller than the network's size step.
    """
    scale = float(meta.get("pixel_scale", 1.0))
    step = network.size_step
    shape = np.shape(image)
    if len(shape) == 2 or shape[-1] <= 4:  # (H, W[, C]): only a central window is read (images may be lazy)
        window = int(np.ceil((TEST_EDGE + 2 * step) / scale))
        y0, x0 = max(0, (shape[0] - window) // 2), max(0, (shape[1] - window) // 2)
        image = image[y0 : y0 + window, x0 : x0 + window]
    arr = rescale(to_channels_last(np.asarray(image), network.in_channels), scale)
    edge = min(TEST_EDGE, *arr.shape[:2]) // step * step
    if edge < step:
        raise InstanceTunerError(f"the sample image is {arr.shape[0]} x {arr.shape[1]} pixels at network scale; "
                                 f"the network needs at least {step} x {step}")
    y0, x0 = (arr.shape[0] - edge) // 2, (arr.shape[1] - edge) // 2
    crop = arr[y0 : y0 + edge, x0 : x0 + edge]
    return np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32)


def run_wrapper(wrapper, test_input: np.ndarray, normalisation: dict | None) -> np.ndarray:
    """What a bioimage.io consumer computes: the rdf's preprocessing, then the network (float32 array)."""
    import torch

    normalised = normalise(test_input[0].transpose(1, 2, 0), normalisation).transpose(2, 0, 1)[None]
    with torch.inference_mode():
        return wrapper(torch.from_numpy(np.ascontiguousarray(normalised))).float().numpy()


def export_package(loaded, sample: np.ndarray, out: str | Path, info: PackageInfo | None = None) -> Path:
    """Write ``loaded`` as a bioimage.io model package.

    Parameters
    ----------
    loaded : LoadedModel
        The model (:func:`~.checkpoint.load_model`, or a fine-tuned one with its parent's metadata).
    sample : np.ndarray
        A real image (H, W) or (H, W, C) of the kind the model segments; the test tensors and cover are cut
        from it.
    out : path-like
        A ``.zip`` file, or a folder (created; must be empty if it exists).
    info : PackageInfo, optional

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    InstanceTunerError
        If the family cannot be packaged, the sample is too small or ``out`` is a non-empty folder.
    """
    info = info or PackageInfo()
    out = Path(out)
    if out.suffix != ".zip" and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InstanceTunerError(f"{str(out)!r} exists and is not an empty folder; choose a new folder or a .zip")
    meta = loaded.meta
    network = loaded.family.package_network(meta)
    source, wrapper = package_wrapper(network, meta["architecture"], loaded.model.state_dict())
    test_input = test_crop(sample, meta, network)
    test_output = run_wrapper(wrapper, test_input, meta.get("normalisation"))
    files = {
        "architecture.py": source.encode(),
        "weights.pt": _state_dict_bytes(wrapper),
        "test_input.npy": _npy_bytes(test_input),
        "test_output.npy": _npy_bytes(test_output),
        "sample_input.tif": _tiff_bytes(test_input[0]),
        "sample_output.tif": _tiff_bytes(test_output[0]),
        "cover.png": _cover_png(test_input, test_output, meta.get("normalisation")),
        "README.md": _documentation(loaded, network, info).encode(),
    }
    if network.torchscript:
        files["weights.torchscript.pt"] = _torchscript_bytes(wrapper, test_input)
    files[RDF_NAME] = _rdf_text(loaded, network, info, test_input.shape, sorted(files)).encode()
    if out.suffix == ".zip":
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)[1])
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                for name in [RDF_NAME] + sorted(set(files) - {RDF_NAME}):
                    zf.writestr(name, files[name])
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
        for name, data in files.items():
            (staging / name).write_bytes(data)
        if out.exists():
            out.rmdir()
        shutil.move(str(staging), out)
    return out


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _tiff_bytes(array: np.ndarray) -> bytes:
    """(C, H, W) float32 as a TIFF: the human-readable sample tensors (the spec wants imageio-readable files)."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, array, photometric="minisblack")  # channels as pages, never read as RGB
    return buf.getvalue()


def _state_dict_bytes(wrapper) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in wrapper.state_dict().items()}, buf)
    return buf.getvalue()


def _torchscript_bytes(wrapper, test_input: np.ndarray) -> bytes:
    import torch

    example = torch.from_numpy(test_input)
    with warnings.catch_warnings():
        # TorchScript is deprecated in PyTorch but is what deepImageJ, ilastik and bioimageio.core run.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    return buf.getvalue()


def _cover_png(test_input: np.ndarray, test_output: np.ndarray, normalisation: dict | None) -> bytes:
    """2:1 cover: the normalised test input beside the first output map (grey), uint8 PNG."""
    import imageio.v3 as iio

    image = np.clip(normalise(test_input[0].transpose(1, 2, 0), normalisation), 0, 1)
    image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    output = np.repeat(np.clip(test_output[0, 0], 0, 1)[..., None], 3, axis=-1)
    cover = (np.concatenate([image, output], axis=1) * 255).round().astype(np.uint8)
    return iio.imwrite("<bytes>", cover, extension=".png")


def _axes(network: PackageNetwork, channels: list[str], scale: float, unit: str | None, size_of) -> list[dict]:
    axes = [{"type": "batch"}, {"type": "channel", "channel_names": channels}]
    for axis_id in ("y", "x"):
        axis = {"type": "space", "id": axis_id, "size": size_of(axis_id), "scale": scale}
        if unit:
            axis["unit"] = unit
        axes.append(axis)
    return axes


def _rdf_text(loaded, network: PackageNetwork, info: PackageInfo, input_shape, files: list[str]) -> str:
    import yaml

    meta = loaded.meta
    card = meta.get("card") or {}
    pixel_scale = float(meta.get("pixel_scale", 1.0))
    scale = info.pixel_size / pixel_scale if info.pixel_size else 1.0
    unit = "micrometer" if info.pixel_size else None
    step = network.size_step
    in_names = ["grey"] if network.in_channels == 1 else ["red", "green", "blue"]
    norm = meta.get("normalisation") or {"kind": "percentile", "low": 1.0, "high": 99.8}
    preprocessing = []
    if norm.get("kind") == "percentile":
        preprocessing.append({"id": "scale_range", "kwargs": {
            "axes": ["y", "x"], "min_percentile": float(norm["low"]), "max_percentile": float(norm["high"])}})
    architecture = {"source": "architecture.py", "callable": network.callable,
                    "kwargs": {"architecture": meta["architecture"]}}
    weights = {"pytorch_state_dict": {"source": "weights.pt", "architecture": architecture,
                                      "pytorch_version": _torch_version()}}
    if "weights.torchscript.pt" in files:
        weights["torchscript"] = {"source": "weights.torchscript.pt", "pytorch_version": _torch_version(),
                                  "parent": "pytorch_state_dict"}
    name = str(loaded.name)
    name = name if len(name) >= 5 else f"{name} model"  # the spec wants 5 to 128 characters
    rdf = {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": "".join(c if c.isalnum() or c in "_+- ()" else "-" for c in name)[:128],
        "description": (info.description or card.get("summary") or meta.get("summary")
                        or f"{loaded.family.name} instance segmentation model exported by napari-instance-tuner"),
        "authors": [{"name": a} for a in info.authors],
        "maintainers": [{"github_user": m} for m in info.maintainers],
        "cite": list(loaded.family.citations),
        "license": info.license,
        "tags": ["instance-segmentation", "napari-instance-tuner", loaded.family.name, "pytorch", "2d"],
        "documentation": "README.md",
        "covers": ["cover.png"],
        "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "inputs": [{
            "id": "input",
            # The spec allows 128 characters: the sample's name is in the README.
            "description": f"an image resized by {pixel_scale:g} (napari-instance-tuner's pixel_scale), raw intensities",
            "axes": _axes(network, in_names, scale, unit, lambda a: {"min": step, "step": step}),
            "test_tensor": {"source": "test_input.npy"},
            "sample_tensor": {"source": "sample_input.tif"},
            "data": {"type": "float32"},
            "preprocessing": preprocessing,
        }],
        "outputs": [{
            "id": network.output_id,
            "description": f"probabilities: {', '.join(network.channels)}",
            "axes": _axes(network, list(network.channels), scale, unit,
                          lambda a: {"tensor_id": "input", "axis_id": a}),
            "test_tensor": {"source": "test_output.npy"},
            "sample_tensor": {"source": "sample_output.tif"},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": weights,
        "config": {CONFIG_KEY: {
            "package_format": PACKAGE_FORMAT,
            "family": loaded.family.name,
            "state_dict_prefix": STATE_PREFIX,
            "pixel_size_um": info.pixel_size,
            "parent_sha256": loaded.sha256,
            "meta": json.loads(json.dumps(meta)),
        }},
    }
    return yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True, width=120)


def _documentation(loaded, network: PackageNetwork, info: PackageInfo) -> str:
    meta = loaded.meta
    pixel_scale = float(meta.get("pixel_scale", 1.0))
    size = (f"{info.pixel_size:g} µm per pixel in the images it was made for, {info.pixel_size / pixel_scale:g} µm "
            "at network scale" if info.pixel_size else "not recorded (the axes' scale is 1)")
    norm = meta.get("normalisation") or {}
    lines = [
        f"# {loaded.name}",
        "",
        (info.description or (meta.get("card") or {}).get("summary") or f"A {loaded.family.name} model."),
        "",
        ("Exported by napari-instance-tuner from its checkpoint "
         f"(SHA-256 `{loaded.sha256}`); family **{loaded.family.name}**."),
        "",
        "## Input and preprocessing",
        "",
        (f"- Channels: {network.in_channels} ({'grey' if network.in_channels == 1 else 'RGB'}); grey images are "
         "repeated to RGB and RGB averaged to grey by the plugin."),
        (f"- Normalisation: per channel, the {norm.get('low', 1.0)} and {norm.get('high', 99.8)} percentiles "
         "mapped to 0 and 1 (`scale_range`). The plugin normalises the whole image before resizing; the package "
         "normalises the tensor it is given."),
        f"- Pixel scale: the plugin resizes images by **{pixel_scale:g}** before the network. bioimage.io has no "
        "resizing step: give the package images already resized by this factor (the test tensors are at network "
        "scale). Pixel size: " + size + ".",
        f"- Height and width: multiples of {network.size_step}. The plugin tiles large images "
        f"({meta.get('tile_size', 512)}-pixel tiles, {meta.get('tile_overlap', 64)}-pixel overlap, linear blending)"
        + (f" and averages {meta['test_time_flips']} mirrored copies" if meta.get("test_time_flips", 1) > 1 else "")
        + ".",
        "",
        "## Output",
        "",
        f"`{network.output_id}`: float32 channels {', '.join(network.channels)}, values in [0, 1].",
        "",
        network.notes,
        "",
        "## Post-processing (napari-instance-tuner)",
        "",
        "```json",
        json.dumps(meta.get("postprocess", {}), indent=1),
        "```",
        "",
        ("Load the package in napari-instance-tuner (`--model PACKAGE.zip` or the model picker) to get the same "
         "labels as the original weights: the metadata above, the tiling and the exact weights are restored from "
         "`config.napari_instance_tuner`."),
        "",
        "## Validation",
        "",
        (f"The test tensors are a central crop of {info.sample_name} at network scale. Validation figures of the "
         "original model (from its metadata):"),
        "",
        "```json",
        json.dumps({k: meta.get(k) for k in ("metrics",) if k in meta} or {"metrics": "not recorded"}, indent=1)[:4000],
        "```",
        "",
        "## Training",
        "",
        "```json",
        json.dumps({k: v for k, v in (meta.get("training") or {}).items() if k != "history"}, indent=1)[:6000],
        "```",
        "",
        f"Licence of the weights: {info.license}. Cite the papers listed in the package's `cite` field.",
        "",
    ]
    return "\n".join(lines)
