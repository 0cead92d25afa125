"""Loading torchvision Mask R-CNN weights (``.pth`` state_dicts, COCO) into :class:`.model.InstanceMaskRCNN`.

Files are read with ``torch.load(weights_only=True)``: a pickle that would run code is refused with a
:class:`~...errors.WeightsError` naming the file. Class-specific layers are replaced when the file's class
count differs from the model's (e.g. torchvision's 91 COCO classes for our 1 + background).
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from ...errors import WeightsError
from .model import InstanceMaskRCNN

#: Keys of the class-specific layers, replaced when the class count differs. The mask predictor's
#: transposed convolution (``conv5_mask``) is class-agnostic and is kept.
_CLASS_SPECIFIC = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


@dataclass
class LoadReport:
    """What :func:`load_torchvision_state_dict` did.

    Attributes
    ----------
    source : str
    file_classes : int or None
        Class count of the file's box predictor (91 for torchvision's COCO weights).
    replaced : list of str
        Class-specific keys of the file that were not loaded (fresh layers for our class count).
    missing : list of str
        Model keys the file lacks (``num_batches_tracked`` counters are ignored).
    unexpected : list of str
        File keys the model lacks.
    """

    source: str
    file_classes: int | None
    replaced: list[str]
    missing: list[str]
    unexpected: list[str]


def _read_pth(path: Path) -> dict:
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": noise before the refusal below
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise WeightsError(
            f"{path.name!r} holds pickled code or objects other than tensors and was refused: only plain "
            "state_dicts of tensors are loaded, and a file that needs more is never unpickled"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in reason:  # torch's advice to unpickle anyway is not passed on
            reason = "it is not a plain state_dict"
        raise WeightsError(f"{path.name!r} is not a readable PyTorch weights file: {reason}") from None
    for key in ("model", "state_dict"):  # training checkpoints that wrap the state_dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise WeightsError(f"{path.name!r} does not hold a state_dict (a mapping of names to tensors)")
    return obj


def set_num_classes(model: InstanceMaskRCNN, num_classes: int) -> None:
    """Give ``model`` fresh box and mask predictors for ``num_classes`` (including background)."""
    heads = model.roi_heads
    if heads.box_predictor.cls_score.out_features == num_classes:
        return
    heads.box_predictor = FastRCNNPredictor(heads.box_predictor.cls_score.in_features, num_classes)
    old = heads.mask_predictor
    fresh = MaskRCNNPredictor(old.conv5_mask.in_channels, old.conv5_mask.out_channels, num_classes)
    fresh.conv5_mask.load_state_dict(old.conv5_mask.state_dict())
    heads.mask_predictor = fresh
    model.config = replace(model.config, num_classes=num_classes)


def load_state_into(model: InstanceMaskRCNN, state: dict, source: str, *, strict: bool = True) -> LoadReport:
    """Load a torchvision-format Mask R-CNN state_dict, replacing class-specific layers if the counts differ.

    See :func:`load_torchvision_state_dict`.
    """
    own = model.state_dict()
    cls_key = "roi_heads.box_predictor.cls_score.weight"
    file_classes = int(state[cls_key].shape[0]) if cls_key in state else None
    replaced = []
    if file_classes is not None and file_classes != model.config.num_classes:
        replaced = sorted(k for k in state if k.startswith(_CLASS_SPECIFIC))
    dropped = set(replaced)
    usable = {k: v for k, v in state.items() if k not in dropped}
    wrong = [k for k, v in usable.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise WeightsError(
            f"{source}: {len(wrong)} tensors do not fit the {model.config.backbone} architecture, e.g. {wrong[0]} "
            f"{tuple(usable[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)} (check anchor aspect ratios, "
            "mask head and backbone)"
        )
    result = model.load_state_dict(usable, strict=False)
    fresh = _fresh(model, replaced)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked") and k not in fresh]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    report = LoadReport(source, file_classes, replaced, missing, unexpected)
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} model tensors are missing from the file (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} file tensors have no place in the model (e.g. {unexpected[0]})")
        what = f"a torchvision Mask R-CNN {model.config.backbone} state_dict"
        raise WeightsError(f"{source} is not {what}: " + "; ".join(parts))
    return report


def _fresh(model: InstanceMaskRCNN, replaced: list[str]) -> set[str]:
    """Model keys that are meant to stay freshly initialised (the class-specific layers when replaced)."""
    return {k for k in model.state_dict() if k.startswith(_CLASS_SPECIFIC)} if replaced else set()


def load_torchvision_state_dict(
    model: InstanceMaskRCNN, path: str | Path, num_classes: int | None = None, *, strict: bool = True
) -> LoadReport:
    """Load a torchvision ``.pth`` (e.g. ``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth``) into ``model``.

    The file is read with ``torch.load(weights_only=True)``, which refuses pickles that would run code.
    When the file's class count (91 for COCO) differs from ours, its box predictor and the mask
    predictor's class logits are not loaded: the model keeps fresh layers for ``num_classes``.

    Parameters
    ----------
    model : InstanceMaskRCNN
        Built with the matching backbone (``resnet50_fpn`` for torchvision's COCO weights).
    path : path-like
    num_classes : int, optional
        Classes including background; if it differs from the model's, the model's predictors are
        replaced first. Default: the model's.
    strict : bool
        Raise when tensors are missing or unexpected (default); else only report them.

    Returns
    -------
    LoadReport

    Raises
    ------
    WeightsError
        For a missing, unreadable or code-carrying file, a file that is not a state_dict, tensors of the
        wrong shape and (``strict``) missing or unexpected tensors; the message names the file.
    """
    path = Path(path)
    if num_classes is not None:
        set_num_classes(model, int(num_classes))
    return load_state_into(model, _read_pth(path), repr(path.name), strict=strict)


def load_coco_weights(model: InstanceMaskRCNN) -> LoadReport:
    """Download torchvision's COCO Mask R-CNN weights (``resnet50_fpn`` only) and load them as above.

    Raises
    ------
    WeightsError
        For another backbone, or when the download fails (offline): the message says how to pass the
        file by hand instead.
    """
    if model.config.backbone != "resnet50_fpn":
        raise WeightsError(f"COCO weights exist for the resnet50_fpn backbone only, not {model.config.backbone!r}")
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights  # deferred: torchvision's weight registry

    weights = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - URLError, OSError, hash mismatch: all mean "no usable download"
        raise WeightsError(
            f"could not download torchvision's COCO Mask R-CNN weights ({type(exc).__name__}: {exc}); "
            f"offline? Download {weights.url} on another machine and pass the file as init_weights"
        ) from None
    report = load_state_into(model, state, "torchvision COCO_V1 weights")
    from torchvision.models.detection._utils import overwrite_eps  # deferred: torchvision

    overwrite_eps(model, 0.0)  # as torchvision does for these weights (frozen batch norm without epsilon)
    return report
