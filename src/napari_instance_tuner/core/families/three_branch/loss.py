"""Weighted binary cross-entropy per branch (section IV of the three-branch paper).

Each branch's positives are weighted by the batch's negative/positive ratio (capped), which balances
the sparse boundary and centroid targets against the background; the branch losses are summed.
Pixels outside the valid region (padding) get weight 0. An optional second ``valid`` channel adds a
per-pixel weight to the first branch, the foreground (U-Net's separation weight, see
:func:`.targets.separation_weights`; not in the paper, off unless training asks for it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_bce(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, max_pos_weight: float = 10.0
) -> tuple[torch.Tensor, list[float]]:
    """Class-balanced BCE summed over branches.

    Parameters
    ----------
    logits : torch.Tensor
        float32 (B, K, H, W).
    targets : torch.Tensor
        float32 (B, K, H, W) in {0, 1}.
    valid : torch.Tensor
        float32 (B, 1, H, W) in {0, 1}; 0 excludes a pixel. Or (B, 2, H, W): channel 1 is added to the
        weight of branch 0 (the foreground).
    max_pos_weight : float
        Cap of the positive weight.

    Returns
    -------
    total : torch.Tensor
        Scalar loss.
    per_branch : list of float
        Each branch's loss, for logging.
    """
    per_branch = []
    total = logits.new_zeros(())
    extra = valid[:, 1:2] if valid.shape[1] > 1 else None
    valid = valid[:, :1]
    n_valid = valid.sum().clamp(min=1.0)
    for k in range(logits.shape[1]):
        t = targets[:, k : k + 1]
        pos = (t * valid).sum()
        neg = n_valid - pos
        pos_weight = (neg / pos.clamp(min=1.0)).clamp(1.0, max_pos_weight)
        weight = valid * (1 + (pos_weight - 1) * t)
        if k == 0 and extra is not None:
            weight = weight + extra * valid
        loss = F.binary_cross_entropy_with_logits(logits[:, k : k + 1], t, weight=weight, reduction="sum") / n_valid
        per_branch.append(float(loss.detach()))
        total = total + loss
    return total, per_branch
