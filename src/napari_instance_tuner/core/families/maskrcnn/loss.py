"""Loss of the Mask R-CNN family: torchvision's own.

torchvision's Mask R-CNN computes its losses itself, in its training-mode forward pass
``model(images, targets)`` (RPN objectness and box regression, box classification and regression, mask
binary cross-entropy); there is no separate loss function to write. This module only weights and sums
them (MaskPlus biased training).
"""

from __future__ import annotations


class DetectionLoss:
    """``loss_fn(losses) -> (loss, parts)`` of :meth:`~.family.MaskRCNNFamily.training_step`.

    Sums torchvision's loss dict (``loss_classifier``, ``loss_box_reg``, ``loss_mask``, ``loss_objectness``,
    ``loss_rpn_box_reg`` and MaskPlus's auxiliary mask losses), the mask loss weighted by ``alpha`` for the
    first ``biased_steps`` calls (MaskPlus biased training), then by 1.

    Parameters
    ----------
    alpha : float
    biased_steps : int
        0 turns biased training off.
    start_step : int
        Steps already trained (a resumed run continues the schedule).
    """

    def __init__(self, alpha: float = 1.0, biased_steps: int = 0, start_step: int = 0) -> None:
        self.alpha, self.biased_steps, self.step = alpha, biased_steps, start_step

    def __call__(self, losses: dict):
        """``losses``: name -> scalar tensor; returns the float32 weighted sum and the parts as floats."""
        losses = {k: v.float() for k, v in losses.items()}  # float32 even from bfloat16 autocast
        alpha = self.alpha if self.step < self.biased_steps else 1.0
        self.step += 1
        loss = sum(v for k, v in losses.items() if k != "loss_mask") + alpha * losses["loss_mask"]
        parts = {k: float(v.detach()) for k, v in losses.items()}
        parts["mask_alpha"] = alpha
        return loss, parts
