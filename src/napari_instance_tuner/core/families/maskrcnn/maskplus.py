"""MaskPlus options for torchvision's mask branch (``../shared/papers/maskplus.txt``, sections 3.3-3.4, 4.5-4.6).

- :class:`DenseBoundaryRefinement` -- the *improved boundary refinement*: a stack of densely connected
  modules (BatchNorm, PReLU, Conv 16, BatchNorm, PReLU, Conv 4; each module takes the concatenation of the
  input and of every earlier module's output; 4 modules) that learns a residual correction of the mask
  logits. Added to torchvision's ``MaskRCNNPredictor`` as its last child, so torchvision's state-dict keys
  (and COCO files) are unchanged.
- :class:`AuxiliaryMaskHead` and :class:`QuasiMultitaskRoIHeads` -- *quasi-multitask learning*: a second
  branch from the RoIAlign features predicts the masks at 0.5x (14 x 14) and 2x (56 x 56) the 28 x 28 output;
  their losses (torchvision's ``maskrcnn_loss``, whose projection of the ground-truth masks onto the boxes
  adapts to the logits' size) are added during training only. The output mask is still the 28 x 28 branch.

Deliberate choices where the paper is silent: the boundary modules use 3 x 3 convolutions and act on the
predictor's logits, and their final 1 x 1 convolution starts at zero (a model with refinement starts out
predicting exactly what the plain model does); the auxiliary branch has two 3 x 3 convolutions, then one
1 x 1 output at 14 x 14 and two stride-2 transposed convolutions before the one at 56 x 56; each auxiliary
loss has weight 1.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss

#: Auxiliary mask sizes MaskPlus trains with (0.5x and 2x the 28 x 28 mask).
AUX_MASK_SIZES = (14, 56)


class DenseBoundaryRefinement(nn.Module):
    """Residual refinement of mask logits by densely connected convolution modules.

    Parameters
    ----------
    channels : int
        Channels of the logits (the class count).
    modules : int
        Number of modules (MaskPlus: 4).
    width : int
        Filters of each module's first convolution (MaskPlus: 16).
    growth : int
        Filters of each module's second convolution, i.e. channels it adds (MaskPlus: 4).

    Notes
    -----
    ``forward`` maps float32 (R, channels, M, M) logits to refined logits of the same shape.
    """

    def __init__(self, channels: int, modules: int = 4, width: int = 16, growth: int = 4) -> None:
        super().__init__()
        blocks = []
        for i in range(modules):
            cin = channels + i * growth
            blocks.append(nn.Sequential(
                nn.BatchNorm2d(cin), nn.PReLU(cin), nn.Conv2d(cin, width, 3, padding=1),
                nn.BatchNorm2d(width), nn.PReLU(width), nn.Conv2d(width, growth, 3, padding=1),
            ))
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Conv2d(channels + modules * growth, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        features = [logits]
        for block in self.blocks:
            features.append(block(torch.cat(features, 1)))
        return logits + self.out(torch.cat(features, 1))


class AuxiliaryMaskHead(nn.Module):
    """The quasi-multitask branch: RoIAlign features (R, C, 14, 14) -> mask logits at the auxiliary sizes.

    Parameters
    ----------
    in_channels : int
        Channels of the RoIAlign features (the FPN width).
    channels : int
        Width of the branch.
    num_classes : int
    sizes : tuple of int
        A subset of :data:`AUX_MASK_SIZES`.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, sizes: tuple[int, ...] = AUX_MASK_SIZES):
        super().__init__()
        unknown = set(sizes) - set(AUX_MASK_SIZES)
        if unknown or not sizes:
            raise ValueError(f"auxiliary mask sizes must be a non-empty subset of {AUX_MASK_SIZES}, got {sizes}")
        self.sizes = tuple(sorted(set(sizes)))
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
        )
        if 14 in self.sizes:
            self.logits14 = nn.Conv2d(channels, num_classes, 1)
        if 56 in self.sizes:
            self.up = nn.Sequential(
                nn.ConvTranspose2d(channels, channels, 2, 2), nn.ReLU(inplace=True),
                nn.ConvTranspose2d(channels, channels, 2, 2), nn.ReLU(inplace=True),
            )
            self.logits56 = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        """{size: float32 (R, num_classes, size, size) logits} for 14 x 14 RoI features."""
        x = self.body(features)
        out = {}
        if 14 in self.sizes:
            out[14] = self.logits14(x)
        if 56 in self.sizes:
            out[56] = self.logits56(self.up(x))
        return out


class QuasiMultitaskRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` plus the auxiliary mask losses ``loss_mask_aux14`` / ``loss_mask_aux56``.

    Everything torchvision computes is unchanged; in training, the RoIs sampled for the mask loss (the
    positive proposals, as torchvision chooses them) are pooled once more and scored by ``aux_head``.
    """

    def __init__(self, aux_head: AuxiliaryMaskHead, **kwargs) -> None:
        super().__init__(**kwargs)
        self.aux_head = aux_head
        self._sampled = None

    @classmethod
    def from_heads(cls, heads: RoIHeads, aux_head: AuxiliaryMaskHead) -> QuasiMultitaskRoIHeads:
        """The same heads (shared modules and settings) with the auxiliary branch."""
        return cls(
            aux_head,
            box_roi_pool=heads.box_roi_pool, box_head=heads.box_head, box_predictor=heads.box_predictor,
            fg_iou_thresh=heads.proposal_matcher.high_threshold, bg_iou_thresh=heads.proposal_matcher.low_threshold,
            batch_size_per_image=heads.fg_bg_sampler.batch_size_per_image,
            positive_fraction=heads.fg_bg_sampler.positive_fraction, bbox_reg_weights=heads.box_coder.weights,
            score_thresh=heads.score_thresh, nms_thresh=heads.nms_thresh,
            detections_per_img=heads.detections_per_img, mask_roi_pool=heads.mask_roi_pool,
            mask_head=heads.mask_head, mask_predictor=heads.mask_predictor,
        )

    def select_training_samples(self, proposals, targets):
        sampled = super().select_training_samples(proposals, targets)
        self._sampled = sampled  # (proposals, matched_idxs, labels, regression_targets), read by forward
        return sampled

    def forward(self, features, proposals, image_shapes, targets=None):
        result, losses = super().forward(features, proposals, image_shapes, targets)
        if not self.training:
            return result, losses
        sampled, self._sampled = self._sampled, None
        proposals, matched_idxs, labels, _ = sampled
        positive = [torch.where(lab > 0)[0] for lab in labels]  # as torchvision picks the mask RoIs
        mask_proposals = [p[i] for p, i in zip(proposals, positive)]
        matched = [m[i] for m, i in zip(matched_idxs, positive)]
        pooled = self.mask_roi_pool(features, mask_proposals, image_shapes)
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        for size, logits in self.aux_head(pooled).items():
            losses[f"loss_mask_aux{size}"] = maskrcnn_loss(logits, mask_proposals, gt_masks, gt_labels, matched)
        return result, losses
