"""Mask R-CNN built from torchvision parts and its configuration (weights loading: :mod:`.weights`).

The detector is torchvision's :class:`~torchvision.models.detection.MaskRCNN` (composition of backbone,
RPN, RoI heads and transform). Backbones:

- ``"resnet50_fpn"``: exactly the module tree of ``torchvision.models.detection.maskrcnn_resnet50_fpn``
  (same state-dict keys), so COCO weights load; optionally with frozen batch norm as torchvision uses
  for pretrained backbones;
- ``"resnet18_fpn"``: torchvision's ResNet-18 + FPN (256 channels), no pretrained weights;
- ``"tiny_fpn"``: a four-stage ResNet of torchvision ``BasicBlock``s (widths c, 2c, 4c, 8c at strides
  4..32) with group norm and a narrow FPN, small enough to train from scratch on a laptop CPU;
- ``"efficientnet_lite0_fpn"``, ``"efficientnet_lite2_fpn"``: EfficientNet-Lite's trunk, which starts from
  ImageNet weights, under an FPN of ``fpn_channels`` (:mod:`.lite_backbone`).

Deliberate differences from the papers (DSB2018 Mask R-CNN report; MaskPlus):

- no internal resizing by default (``min_size=0``): the plugin's ``pixel_scale`` fixes the scale at which
  the network sees the image, and large images are tiled (see :mod:`.tiling`) instead of being squeezed
  into 512 x 512 as in the DSB report; a positive ``min_size`` restores torchvision's resizing;
- grey images are repeated to three channels, so every backbone (and COCO weights) sees RGB;
- the anchor sizes default to the report's best, (8, 16, 32, 64, 128), and more RoIs are kept than in
  torchvision (2000 proposals at test time, 500 detections), as the report recommends for images with
  hundreds of nuclei;
- RoIAlign is torchvision's, computed on the CPU as one sparse matrix product (:mod:`.sparse_roi_align`):
  the same values, and a training step on GlaS 2x faster than with torchvision's CPU kernel, whose serial
  backward pass was 38 % of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from .sparse_roi_align import SparseMultiScaleRoIAlign

BACKBONES = ("tiny_fpn", "resnet18_fpn", "resnet50_fpn", "efficientnet_lite0_fpn", "efficientnet_lite2_fpn")

#: Internal thresholds of :meth:`InstanceMaskRCNN.detect`: permissive, so that the live post-processing
#: (score threshold, NMS IoU) can only remove detections, never need the network again.
PERMISSIVE_SCORE = 0.05
PERMISSIVE_NMS = 0.9
#: Image area (pixels at network scale) for which the test-time limits of :class:`MaskRCNNConfig`
#: (``rpn_pre_nms_top_n_test``, ``rpn_post_nms_top_n_test``, ``box_detections_per_img``) are set: the 512 x 512
#: tiles the shipped models were tuned on. :meth:`InstanceMaskRCNN.detect` scales the limits with the area of
#: larger inputs, so that one pass over a large tile keeps as many objects per pixel as 512 x 512 tiles do.
LIMITS_AREA = 512 * 512


@dataclass(frozen=True)
class MaskRCNNConfig:
    """Architecture and detector settings of :class:`InstanceMaskRCNN` (stored in checkpoint metadata).

    Attributes
    ----------
    backbone : str
        One of :data:`BACKBONES`.
    num_classes : int
        Classes including background (2 = background + object).
    base_channels : int
        ``tiny_fpn`` only: width of the first stage (doubled per stage).
    fpn_channels : int
        FPN width of ``tiny_fpn`` and the EfficientNet-Lite backbones (the ResNet backbones use torchvision's 256).
    trainable_backbone_layers : int
        ResNet backbones: how many stages (from the last) train, 0..5.
    frozen_bn : bool
        ResNet backbones: torchvision's ``FrozenBatchNorm2d`` (use it when fine-tuning COCO weights with
        small batches) instead of ``BatchNorm2d``.
    anchor_sizes : tuple of int
        One anchor size (pixels at network scale) per pyramid level: 5 levels.
    aspect_ratios : tuple of float
        Anchor aspect ratios (height / width), shared by all levels.
    rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train, rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test : int
        Proposals kept before / after the RPN's NMS.
    rpn_nms_thresh : float
        IoU of the RPN's NMS.
    rpn_batch_size_per_image, box_batch_size_per_image : int
        Anchors / RoIs sampled per image for the losses.
    box_score_thresh, box_nms_thresh : float
        Thresholds of the plain ``forward`` in eval mode (the plugin's live post-processing uses its own,
        see :class:`.postprocess.MaskRCNNParams`); the DSB report chose NMS 0.6.
    box_detections_per_img : int
        Most detections per image (per tile) kept by the network.
    representation_size : int or None
        Width of the box head's two fully connected layers (None: 1024 for ResNets, 256 for ``tiny_fpn``).
    mask_head_layers : int
        3x3 convolutions in the mask head (torchvision: 4).
    mask_head_channels : int or None
        Their width (None: 256 for ResNets, 64 for ``tiny_fpn``); the predictor's transposed convolution
        has the same width.
    min_size, max_size : int
        torchvision's internal resizing (short side to ``min_size``, long side at most ``max_size``);
        ``min_size=0`` (default) turns it off.
    clahe : bool
        Contrast-limited adaptive histogram equalisation of the normalised image before the network
        (DSB report, section 2.4); a pre-processing step, stored here so that training and inference agree.
    aux_mask_sizes : tuple of int
        MaskPlus quasi-multitask learning: auxiliary mask sizes trained beside the 28 x 28 output, a
        subset of (14, 56); empty turns it off (see :mod:`.maskplus`).
    boundary_refinement : bool
        MaskPlus improved boundary refinement of the mask logits (see :mod:`.maskplus`).
    """

    backbone: str = "tiny_fpn"
    num_classes: int = 2
    base_channels: int = 16
    fpn_channels: int = 64
    trainable_backbone_layers: int = 5
    frozen_bn: bool = False
    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 2000
    rpn_post_nms_top_n_test: int = 2000
    rpn_nms_thresh: float = 0.7
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.6
    box_detections_per_img: int = 500
    representation_size: int | None = None
    mask_head_layers: int = 4
    mask_head_channels: int | None = None
    min_size: int = 0
    max_size: int = 1333
    clahe: bool = False
    aux_mask_sizes: tuple[int, ...] = ()
    boundary_refinement: bool = False

    @classmethod
    def from_dict(cls, values: dict) -> MaskRCNNConfig:
        """Build from JSON metadata, filling backbone-dependent defaults; raises ValueError on bad values."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            valid = sorted(cls.__dataclass_fields__)
            raise ValueError(f"unknown maskrcnn architecture keys {sorted(unknown)}; valid: {valid}")
        values = dict(values)
        for key in ("anchor_sizes", "aspect_ratios", "aux_mask_sizes"):
            if key in values:
                values[key] = tuple(values[key])
        cfg = cls(**values)
        if cfg.backbone not in BACKBONES:
            raise ValueError(f"backbone {cfg.backbone!r} is not one of {BACKBONES}")
        resnet = cfg.backbone.startswith("resnet")
        cfg = replace(
            cfg,
            representation_size=cfg.representation_size or (1024 if resnet else 256),
            mask_head_channels=cfg.mask_head_channels or (256 if resnet else 64),
            anchor_sizes=tuple(int(s) for s in cfg.anchor_sizes),
            aspect_ratios=tuple(float(a) for a in cfg.aspect_ratios),
            aux_mask_sizes=tuple(sorted({int(s) for s in cfg.aux_mask_sizes})),
        )
        checks = [
            (cfg.num_classes >= 2, "num_classes must be at least 2 (background + one class)"),
            (1 <= cfg.base_channels <= 256 and 8 <= cfg.fpn_channels <= 512,
             "base_channels must be 1..256, fpn_channels 8..512"),
            (0 <= cfg.trainable_backbone_layers <= 5, "trainable_backbone_layers must be 0..5"),
            (len(cfg.anchor_sizes) == 5 and all(s > 0 for s in cfg.anchor_sizes),
             "anchor_sizes needs 5 positive sizes, one per pyramid level"),
            (len(cfg.aspect_ratios) >= 1 and all(a > 0 for a in cfg.aspect_ratios), "aspect_ratios must be positive"),
            (0 < cfg.rpn_nms_thresh <= 1 and 0 < cfg.box_nms_thresh <= 1, "NMS thresholds must be in (0, 1]"),
            (0 <= cfg.box_score_thresh < 1, "box_score_thresh must be in [0, 1)"),
            (min(cfg.rpn_pre_nms_top_n_train, cfg.rpn_post_nms_top_n_train, cfg.rpn_pre_nms_top_n_test,
                 cfg.rpn_post_nms_top_n_test, cfg.box_detections_per_img, cfg.rpn_batch_size_per_image,
                 cfg.box_batch_size_per_image) >= 1, "proposal, detection and sampling counts must be positive"),
            (1 <= cfg.mask_head_layers <= 8, "mask_head_layers must be 1..8"),
            (cfg.min_size >= 0 and cfg.max_size >= max(cfg.min_size, 1), "need 0 <= min_size <= max_size"),
            (set(cfg.aux_mask_sizes) <= {14, 56}, "aux_mask_sizes must be a subset of (14, 56)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return cfg

    def to_dict(self) -> dict:
        """JSON-able dict (tuples become lists)."""
        d = asdict(self)
        d["anchor_sizes"] = list(self.anchor_sizes)
        d["aspect_ratios"] = list(self.aspect_ratios)
        d["aux_mask_sizes"] = list(self.aux_mask_sizes)
        return d


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


class _NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's transform (normalise, batch with padding to 32) without its resizing."""

    def resize(self, image, target=None):
        return image, target


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class TinyResNet(nn.Module):
    """A four-stage ResNet of one ``BasicBlock`` per stage: strides 4, 8, 16, 32; widths c, 2c, 4c, 8c."""

    def __init__(self, base: int = 16) -> None:
        from torchvision.models.resnet import BasicBlock  # deferred: torchvision

        super().__init__()
        c = base
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 3, 2, 1, bias=False), _group_norm(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, 2, 1, bias=False), _group_norm(c), nn.ReLU(inplace=True),
        )

        def stage(cin: int, cout: int, stride: int) -> nn.Module:
            down = None
            if stride != 1 or cin != cout:
                down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _group_norm(cout))
            return BasicBlock(cin, cout, stride, down, norm_layer=_group_norm)

        self.layer1 = stage(c, c, 1)
        self.layer2 = stage(c, 2 * c, 2)
        self.layer3 = stage(2 * c, 4 * c, 2)
        self.layer4 = stage(4 * c, 8 * c, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - BackboneWithFPN calls the stages
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def _backbone(cfg: MaskRCNNConfig) -> nn.Module:
    if cfg.backbone == "tiny_fpn":
        c = cfg.base_channels
        return BackboneWithFPN(
            TinyResNet(c), {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
            [c, 2 * c, 4 * c, 8 * c], cfg.fpn_channels,
        )
    if cfg.backbone.startswith("efficientnet"):
        from .lite_backbone import LITE_BACKBONES, LiteFPN  # deferred: only for those backbones

        return LiteFPN(LITE_BACKBONES[cfg.backbone], cfg.fpn_channels)
    from torchvision.models import resnet18, resnet50  # deferred: torchvision's ResNets, only for those backbones
    from torchvision.ops.misc import FrozenBatchNorm2d  # deferred: torchvision

    norm = FrozenBatchNorm2d if cfg.frozen_bn else nn.BatchNorm2d
    net = (resnet50 if cfg.backbone == "resnet50_fpn" else resnet18)(weights=None, norm_layer=norm)
    return _resnet_fpn_extractor(net, cfg.trainable_backbone_layers)


def _normalisation(cfg: MaskRCNNConfig) -> dict:
    """The detector transform's ``image_mean`` / ``image_std``: torchvision's (ImageNet), or none for a trunk that
    normalises its input itself."""
    if not cfg.backbone.startswith("efficientnet"):
        return {}
    from .lite_backbone import IMAGE_MEAN, IMAGE_STD  # deferred: only for those backbones

    return {"image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD)}


#: The parts of :class:`InstanceMaskRCNN` that :meth:`~InstanceMaskRCNN.detect` runs under mixed precision
#: (owner attribute path, child name): the convolutions. Box regression, box decoding, scores and NMS stay in
#: float32: a bfloat16 box coordinate near pixel 500 is off by up to 2 pixels.
MIXED_PRECISION_PARTS = (("", "backbone"), ("rpn", "head"), ("roi_heads", "mask_head"),
                         ("roi_heads", "mask_predictor"))


class InstanceMaskRCNN(MaskRCNN):
    """torchvision's Mask R-CNN with the plugin's config and a cached-detection entry point (:meth:`detect`).

    ``forward`` is torchvision's: in training mode ``model(images, targets)`` returns the loss dict (see
    :meth:`~.family.MaskRCNNFamily.training_step`).

    Attributes
    ----------
    config : MaskRCNNConfig
    """

    def __init__(self, config: MaskRCNNConfig) -> None:
        backbone = _backbone(config)
        ch = backbone.out_channels
        mask_ch = config.mask_head_channels
        super().__init__(
            backbone,
            num_classes=None,
            min_size=max(config.min_size, 1),
            max_size=config.max_size,
            rpn_anchor_generator=AnchorGenerator(
                tuple((s,) for s in config.anchor_sizes), (config.aspect_ratios,) * len(config.anchor_sizes)
            ),
            rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
            rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
            rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
            rpn_nms_thresh=config.rpn_nms_thresh,
            rpn_batch_size_per_image=config.rpn_batch_size_per_image,
            # torchvision's default poolers, computed as a sparse product on the CPU (same values, faster)
            box_roi_pool=SparseMultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2),
            box_head=TwoMLPHead(ch * 7 * 7, config.representation_size),
            box_predictor=FastRCNNPredictor(config.representation_size, config.num_classes),
            box_score_thresh=config.box_score_thresh,
            box_nms_thresh=config.box_nms_thresh,
            box_detections_per_img=config.box_detections_per_img,
            box_batch_size_per_image=config.box_batch_size_per_image,
            mask_roi_pool=SparseMultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2),
            mask_head=MaskRCNNHeads(ch, (mask_ch,) * config.mask_head_layers, 1),
            mask_predictor=MaskRCNNPredictor(mask_ch, mask_ch, config.num_classes),
            **_normalisation(config),
        )
        if config.boundary_refinement:  # the predictor's last child: torchvision's keys stay as they are
            from .maskplus import DenseBoundaryRefinement  # deferred: only for MaskPlus models

            self.roi_heads.mask_predictor.add_module("refine", DenseBoundaryRefinement(config.num_classes))
        if config.aux_mask_sizes:
            from .maskplus import AuxiliaryMaskHead, QuasiMultitaskRoIHeads  # deferred: only for MaskPlus models

            aux = AuxiliaryMaskHead(ch, mask_ch, config.num_classes, config.aux_mask_sizes)
            self.roi_heads = QuasiMultitaskRoIHeads.from_heads(self.roi_heads, aux)
        if config.min_size == 0:
            t = self.transform
            self.transform = _NoResizeTransform(1, config.max_size, t.image_mean, t.image_std)
        self.config = config

    @torch.no_grad()
    def detect(self, images: torch.Tensor, autocast=None) -> list[dict[str, torch.Tensor]]:
        """Permissive detections with mask probabilities at the mask head's resolution (nothing pasted).

        Parameters
        ----------
        images : torch.Tensor
            float32 (B, 3, H, W), normalised to about [0, 1].
        autocast : callable, optional
            Returns an autocast context (e.g. :func:`~...inference.stream_tile.inference_autocast`): the
            parts in :data:`MIXED_PRECISION_PARTS` run inside it, the rest in float32.

        Returns
        -------
        list of dict
            Per image: ``boxes`` float32 (K, 4) x1, y1, x2, y2 in input pixels; ``scores`` float32 (K,);
            ``labels`` int64 (K,); ``masks`` float32 (K, M, M) probabilities of the predicted class
            inside its box (M = 28). Scores >= :data:`PERMISSIVE_SCORE`, class-wise NMS at IoU
            :data:`PERMISSIVE_NMS`, at most ``config.box_detections_per_img`` per image, scaled up with the
            image's area beyond :data:`LIMITS_AREA` (as are the RPN's test-time proposal counts).
        """
        was_training = self.training
        heads, rpn = self.roi_heads, self.rpn
        saved = heads.score_thresh, heads.nms_thresh, heads.detections_per_img, dict(rpn._pre_nms_top_n), \
            dict(rpn._post_nms_top_n)
        self.eval()
        heads.score_thresh, heads.nms_thresh = PERMISSIVE_SCORE, PERMISSIVE_NMS
        factor = max(1.0, images.shape[-2] * images.shape[-1] / LIMITS_AREA)
        cfg = self.config
        rpn._pre_nms_top_n["testing"] = round(cfg.rpn_pre_nms_top_n_test * factor)
        rpn._post_nms_top_n["testing"] = round(cfg.rpn_post_nms_top_n_test * factor)
        heads.detections_per_img = round(cfg.box_detections_per_img * factor)
        swapped = []
        if autocast is not None:
            from ...inference.cpu import AutocastFloat32  # deferred: bioimage.io packages hold this file alone

            for owner_path, child in MIXED_PRECISION_PARTS:
                owner = self.get_submodule(owner_path)
                swapped.append((owner, child, getattr(owner, child)))
                setattr(owner, child, AutocastFloat32(getattr(owner, child), autocast))
        try:
            original_sizes = [tuple(img.shape[-2:]) for img in images]
            batch, _ = self.transform(list(images))
            features = self.backbone(batch.tensors)
            proposals, _ = self.rpn(batch, features)
            detections, _ = heads(features, proposals, batch.image_sizes)
        finally:
            for owner, child, module in swapped:
                setattr(owner, child, module)
            heads.score_thresh, heads.nms_thresh, heads.detections_per_img, rpn._pre_nms_top_n, \
                rpn._post_nms_top_n = saved
            self.train(was_training)
        out = []
        for det, size, orig in zip(detections, batch.image_sizes, original_sizes):
            boxes = resize_boxes(det["boxes"], size, orig) if tuple(size) != orig else det["boxes"]
            out.append({"boxes": boxes, "scores": det["scores"], "labels": det["labels"], "masks": det["masks"][:, 0]})
        return out


def build_maskrcnn(config: MaskRCNNConfig | dict) -> InstanceMaskRCNN:
    """An untrained :class:`InstanceMaskRCNN` (random weights; nothing is downloaded)."""
    if isinstance(config, dict):
        config = MaskRCNNConfig.from_dict(config)
    return InstanceMaskRCNN(config)
