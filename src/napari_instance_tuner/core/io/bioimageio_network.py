"""The network inside a bioimage.io package: one self-contained ``architecture.py`` that needs only torch.

A family describes its packaged network with a :class:`PackageNetwork`: the modules whose source makes up
the architecture (bundled into one file, relative imports between them removed) and the expression that
builds the bare network. The package's callable wraps it with a head that turns the network's outputs into
the package's output tensor: a sigmoid for the U-Net families (their maps), or rendered detections for
Mask R-CNN. The wrapper holds the bare network as ``net``, so the package's state dict is ours with the
prefix ``net.``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

#: State-dict key prefix of the bare network inside the package's wrapper module.
STATE_PREFIX = "net."

_HEADS = {
    "sigmoid": '''

class {callable}(nn.Module):
    """bioimage.io entry point: the network's maps as probabilities.

    Input: float32 (B, C, H, W) after percentile normalisation, H and W multiples of the size divisor.
    Output: float32 (B, K, H, W) sigmoid probabilities, one channel per map.
    """

    def __init__(self, architecture: dict) -> None:
        super().__init__()
        self.net = {build}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))
''',
    "score_map": '''

class {callable}(nn.Module):
    """bioimage.io entry point: detections rendered as one score map (bioimage.io tensors cannot hold lists).

    Input: float32 (B, 3, H, W) after percentile normalisation.
    Output: float32 (B, 1, H, W): per pixel, the largest (mask probability x detection score) over the
    permissive detections (score >= PERMISSIVE_SCORE). Instances need the plugin's post-processing.
    """

    def __init__(self, architecture: dict) -> None:
        super().__init__()
        self.net = {build}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.models.detection.roi_heads import paste_masks_in_image

        maps = []
        for image, det in zip(x, self.net.detect(x)):
            size = tuple(image.shape[-2:])
            if det["scores"].numel() == 0:
                maps.append(image.new_zeros((1,) + size))
                continue
            pasted = paste_masks_in_image(det["masks"][:, None], det["boxes"], size, padding=1)[:, 0]
            maps.append((pasted * det["scores"][:, None, None]).amax(dim=0, keepdim=True))
        return torch.stack(maps)
''',
}


@dataclass(frozen=True)
class PackageNetwork:
    """How a family's network is packaged (see :meth:`~..family.Family.package_network`).

    Attributes
    ----------
    modules : tuple of str
        Importable modules whose source makes up the architecture, dependencies first.
    build : str
        Python expression, evaluated in the bundled file, that builds the bare network from a dict
        ``architecture`` (e.g. ``"ThreeBranchUNet(ThreeBranchConfig.from_dict(architecture))"``).
    callable : str
        Name of the package's entry point (also how imports recognise the family).
    head : str
        ``"sigmoid"`` (dense maps) or ``"score_map"`` (Mask R-CNN detections rendered to one map).
    output_id : str
        Id of the output tensor.
    channels : tuple of str
        Names of the output channels.
    in_channels : int
        Channels the network takes.
    size_step : int
        Input height and width must be multiples of this (and at least this).
    torchscript : bool
        Whether the wrapper can be traced to TorchScript (its forward has no data-dependent control flow).
    notes : str
        Markdown for the package documentation: what other tools can do with the package.
    """

    modules: tuple[str, ...]
    build: str
    callable: str
    head: str
    output_id: str
    channels: tuple[str, ...]
    in_channels: int
    size_step: int
    torchscript: bool
    notes: str


def bundle_source(network: PackageNetwork) -> str:
    """One Python file with the source of ``network.modules`` and the package's entry point.

    Relative imports of bundled modules are removed (their names are now in the same file); other relative
    imports are made absolute. ``from __future__`` lines move to the top.

    Returns
    -------
    str
        The file's text; it imports torch (and torchvision where the family does), nothing of this plugin
        at import time.
    """
    if network.head not in _HEADS:
        raise ValueError(f"unknown package head {network.head!r}; valid: {sorted(_HEADS)}")
    parts = ['"""Network architecture exported by napari-instance-tuner (a bioimage.io model package)."""\n',
             "from __future__ import annotations\n"]
    bundled = set(network.modules)
    for name in network.modules:
        module = importlib.import_module(name)
        parts.append(f"\n# ---- from {name} ----\n")
        parts.append(_rewrite_imports(inspect.getsource(module), name, bundled))
    parts.append("\nimport torch\nfrom torch import nn\n")
    parts.append(_HEADS[network.head].format(callable=network.callable, build=network.build))
    return "".join(parts)


def _rewrite_imports(source: str, module_name: str, bundled: set[str]) -> str:
    lines = source.splitlines(keepends=True)
    package = module_name.rpartition(".")[0]
    edits = []  # (first line, last line, replacement), 0-based inclusive
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        first, last = node.lineno - 1, node.end_lineno - 1
        indent = " " * node.col_offset
        if node.module == "__future__":
            edits.append((first, last, ""))
        elif node.level:
            target = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            if target in bundled:
                # Keep a statement where the import was the only one in a block (e.g. a function body).
                edits.append((first, last, f"{indent}pass  # {target} is bundled above\n"))
            else:
                names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
                edits.append((first, last, f"{indent}from {target} import {names}\n"))
    for first, last, text in sorted(edits, reverse=True):
        lines[first : last + 1] = [text]
    return "".join(lines)


def load_bundle(source: str, name: str = "napari_instance_tuner_package_architecture") -> ModuleType:
    """Import a bundled architecture file written by :func:`bundle_source` (as bioimage.io tools do)."""
    folder = Path(tempfile.mkdtemp(prefix="nit-architecture-"))
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
        path.unlink()
        folder.rmdir()
    return module
