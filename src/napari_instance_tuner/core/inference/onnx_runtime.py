"""ONNX Runtime for the dense families (three-branch, layering): a torch-free network for tiled inference.

Importing torch costs 1.5 s, half of a command-line run at 1024². Here a loaded network (batch norm folded,
:func:`.cpu.inference_copy`, with its sigmoid) is exported once to an ONNX file in the user's cache folder,
named by the weights' SHA-256 and :data:`EXPORT_VERSION`; later runs load that file with ``onnxruntime``
(0.2 s) and never import torch. The file carries what inference needs (input and output channels, size
divisor, the architecture config) in its metadata, so the network object (:class:`OnnxNetwork`) serves
:func:`.predict.predict_tiled` and the families like the torch module does.

The cache folder is platformdirs' user cache folder (``~/.cache/napari-instance-tuner/onnx`` on Linux);
the environment variable :data:`CACHE_ENV` moves it. A cache file that cannot be read, or was made from other
weights or by another export version, is exported again, never a crash.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..io.safe_write import replace_atomic
from .cpu import available_cores, inference_threads

#: Environment variable naming another cache folder (tests, shared installations).
CACHE_ENV = "NAPARI_INSTANCE_TUNER_CACHE"
#: Version of the export (graph, opset, metadata); a new version re-exports every cached file.
EXPORT_VERSION = 1
#: Key of the JSON metadata inside an exported file.
META_KEY = "napari_instance_tuner"
OPSET = 17


def cache_dir(create: bool = False) -> Path:
    """The folder of the exported networks (made when ``create``)."""
    if os.environ.get(CACHE_ENV):
        folder = Path(os.environ[CACHE_ENV]).expanduser()
    else:
        import platformdirs  # deferred: only when no folder is given

        folder = platformdirs.user_cache_path("napari-instance-tuner", appauthor=False)
    folder = folder / "onnx"
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def cache_path(sha256: str) -> Path:
    """The cache file of the weights with SHA-256 ``sha256``."""
    return cache_dir() / f"{sha256}-v{EXPORT_VERSION}.onnx"


def _with_sigmoid(network):
    """A torch module returning ``network``'s sigmoid (the exported graph gives probabilities)."""
    from torch import nn  # deferred: torch, only to export

    class Probabilities(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, x):
            return self.network(x).sigmoid()

    return Probabilities().eval()


def export_onnx(model, sha256: str, path: str | os.PathLike | None = None) -> Path:
    """Export ``model`` (a dense family's torch network) with batch norm folded and its sigmoid to ONNX,
    atomically, at ``path`` (default :func:`cache_path`); returns the path.

    Inputs ``image`` float32 (N, C, H, W) with H, W multiples of ``model.size_divisor``; output
    ``probabilities`` float32 (N, out channels, H, W) in [0, 1].
    """
    import onnx  # deferred: onnx, only to export
    import torch  # deferred: torch, only to export

    from .cpu import inference_copy  # deferred: torch

    network = _with_sigmoid(inference_copy(model.eval()))
    divisor = int(model.size_divisor)
    in_channels = int(model.config.in_channels)
    side = max(64, 2 * divisor)
    sample = torch.zeros(1, in_channels, side, side)
    with torch.inference_mode():
        out_channels = int(network(sample).shape[1])
    buffer = io.BytesIO()
    axes = {0: "n", 2: "h", 3: "w"}
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation note; dynamo needs onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (sample,), buffer, dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=["probabilities"], dynamic_axes={"image": axes, "probabilities": axes})
    proto = onnx.load_from_string(buffer.getvalue())
    info = {"sha256": sha256, "export_version": EXPORT_VERSION, "in_channels": in_channels,
            "out_channels": out_channels, "size_divisor": divisor, "config": model.config.to_dict()}
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(info)})
    data = proto.SerializeToString()
    path = Path(path) if path is not None else cache_path(sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomic(path, lambda fh: fh.write(data), overwrite=True)
    return path


class OnnxNetwork:
    """An exported network run by ONNX Runtime on the CPU; what :func:`.predict.predict_tiled` and the families
    need of a torch network, without torch.

    Attributes
    ----------
    path : Path
    info : dict
        The file's metadata (see :func:`export_onnx`).
    size_divisor : int
    in_channels, out_channels : int
    config : SimpleNamespace
        The architecture config (e.g. ``branches``, ``n_layers``), as the torch network's ``config``.
    threads : int or None
        Intra-op threads of every call (a dask worker's share); None: :func:`.cpu.inference_threads` per image.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._sessions: dict[int, Any] = {}
        self.threads: int | None = None
        session = self.session(1)
        self.info = json.loads(session.get_modelmeta().custom_metadata_map[META_KEY])
        self.size_divisor = int(self.info["size_divisor"])
        self.in_channels = int(self.info["in_channels"])
        self.out_channels = int(self.info["out_channels"])
        self.config = SimpleNamespace(**self.info["config"])

    def session(self, threads: int):
        """The ``onnxruntime.InferenceSession`` with ``threads`` intra-op threads (made once per count)."""
        if threads not in self._sessions:
            import onnxruntime  # deferred: onnxruntime, 0.2 s

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3  # errors only
            self._sessions[threads] = onnxruntime.InferenceSession(str(self.path), options,
                                                                   providers=["CPUExecutionProvider"])
        return self._sessions[threads]

    def tile_runner(self, device: str = "cpu"):
        """``run(crop) -> probabilities``: float32 (h, w, C) -> float32 (out_channels, h, w) in [0, 1], with the
        threads :func:`.cpu.inference_threads` allows now (the cores other processes leave free), or
        :attr:`threads`."""
        session = self.session(self.threads or inference_threads(available_cores()))

        def run(crop: np.ndarray) -> np.ndarray:
            batch = np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32)[None]
            return session.run(None, {"image": batch})[0][0]

        return run


def load_onnx(sha256: str, export) -> OnnxNetwork:
    """The cached network of the weights ``sha256``; ``export()`` (it may import torch) makes the file when it
    is missing, unreadable, or of other weights or another export version."""
    path = cache_path(sha256)
    if path.is_file():
        try:
            network = OnnxNetwork(path)
        except Exception:  # noqa: BLE001 - any unreadable cache file is replaced, whatever onnxruntime raises
            network = None
        if network is not None and network.info.get("sha256") == sha256 \
                and network.info.get("export_version") == EXPORT_VERSION:
            return network
    cache_dir(create=True)
    export()
    return OnnxNetwork(path)
