"""torchvision's ``MultiScaleRoIAlign`` as one sparse matrix product on the CPU, where it is much faster.

torchvision's CPU kernel for ``roi_align`` runs its backward pass as one serial loop of scattered adds: 38 % of
a training step of an ``efficientnet_lite2_fpn`` Mask R-CNN on glands (256-px crops, batch 4; py-spy, session 29),
and RoIAlign's forward pass was a third of a whole-image detection. RoIAlign is linear in the features: each
output bin is the mean of ``sampling_ratio ** 2`` bilinear samples, each a weighted sum of 4 feature pixels. So
the pooling of every box from every FPN level is one product ``Y = A @ X``, with ``X`` the features of all levels,
one pixel a row (channels last), and ``A`` a sparse matrix with ``4 * sampling_ratio ** 2`` weights a row; the
backward pass is ``A.T @ dY``. Both are multithreaded sparse-dense products in torch: with them a training step
is 2x faster on GlaS crops (Lite2 trunk) and 1.45x on DSB2018 crops (``maskrcnn-dsb2018``), a whole-image detection
slightly faster (``benchmarks/roi_align_speed.py``, docs/benchmarks.md "Session 29").

What is computed is torchvision's (same level per box, sample points, clamping, and zero outside the feature
map, as in its ``bilinear_interpolate``); only the order of the float32 sums differs, so results agree to about
1e-5 relative (``tests/core/test_maskrcnn_sparse_roi_align.py`` compares values and gradients). CUDA tensors, an
adaptive ``sampling_ratio`` (<= 0) and tracing take torchvision's own path.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign

try:  # a private helper of the pinned torchvision; without it the module falls back to torchvision's path
    from torchvision.ops.poolers import _setup_scales
except ImportError:  # pragma: no cover - another torchvision
    _setup_scales = None


def _axis(v: Tensor, size: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Low and high pixel, their weights ``(1 - frac, frac)`` zeroed where ``v`` is off the map, along one axis.

    ``v`` (R, S) float sample coordinates; ``size`` (R, 1) float map length. torchvision's rule: a sample
    outside ``[-1, size]`` is 0; otherwise it is clamped into ``[0, size - 1]``. A NaN sample (a NaN box) is 0 too,
    and its pixel indices stay in range, as the sparse matrix's are not checked.
    """
    v = torch.nan_to_num(v, nan=-2.0)
    inside = ((v >= -1) & (v <= size)).to(v.dtype)
    v = v.clamp(min=0)
    lo = torch.minimum(v.floor(), size - 1)
    hi = torch.minimum(lo + 1, size - 1)
    frac = torch.where(lo >= size - 1, torch.zeros_like(v), v - lo)
    return lo.long(), hi.long(), (1 - frac) * inside, frac * inside


def pooling_matrix(
    boxes: Tensor,
    image: Tensor,
    scale: Tensor,
    height: Tensor,
    width: Tensor,
    first_row: Tensor,
    output_size: tuple[int, int],
    sampling_ratio: int,
) -> tuple[Tensor, Tensor]:
    """The nonzeros of RoIAlign's matrix, a fixed number per output bin.

    Parameters
    ----------
    boxes : Tensor
        float32 (R, 4) boxes ``x1, y1, x2, y2`` in image pixels.
    image : Tensor
        int64 (R,) index of each box's image in the batch.
    scale, height, width : Tensor
        float32 (R,) spatial scale and feature-map height and width of each box's level.
    first_row : Tensor
        int64 (R,) row of ``X`` holding pixel (0, 0, 0) of the box's level; pixel ``(b, y, x)`` of that level is
        row ``first_row + (b * height + y) * width + x``.
    output_size : tuple of int
        ``(ph, pw)`` bins per box.
    sampling_ratio : int
        Samples per bin along each axis (> 0).

    Returns
    -------
    cols : Tensor
        int64 (R * ph * pw, 4 * s * s) rows of ``X``; output row ``(r * ph + i) * pw + j`` is bin (i, j) of box r.
    weights : Tensor
        float32, same shape: bilinear weights divided by the ``s * s`` samples of a bin.
    """
    ph, pw = output_size
    s = sampling_ratio
    n = boxes.shape[0]
    # torchvision's roi_align with aligned=False (MultiScaleRoIAlign's): no half-pixel offset, boxes at least 1x1
    x1, y1 = boxes[:, 0] * scale, boxes[:, 1] * scale
    box_w = (boxes[:, 2] * scale - x1).clamp(min=1.0)
    box_h = (boxes[:, 3] * scale - y1).clamp(min=1.0)
    # sample k of a bin's s along an axis sits at (bin + (k + 0.5) / s) * bin_size from the box's start
    along_y = torch.arange(ph * s, dtype=boxes.dtype)
    along_x = torch.arange(pw * s, dtype=boxes.dtype)
    along_y = (along_y // s) + ((along_y % s) + 0.5) / s
    along_x = (along_x // s) + ((along_x % s) + 0.5) / s
    y_lo, y_hi, wy_lo, wy_hi = _axis(y1[:, None] + along_y[None] * (box_h / ph)[:, None], height[:, None])
    x_lo, x_hi, wx_lo, wx_hi = _axis(x1[:, None] + along_x[None] * (box_w / pw)[:, None], width[:, None])
    first = (first_row + image * height.long() * width.long())[:, None, None, None]  # the box's image's pixel (0, 0)
    cols = (first + torch.stack([y_lo, y_lo, y_hi, y_hi], -1)[:, :, None, :] * width.long()[:, None, None, None]
            + torch.stack([x_lo, x_hi, x_lo, x_hi], -1)[:, None, :, :])  # (R, ph*s, pw*s, 4)
    weights = (torch.stack([wy_lo, wy_lo, wy_hi, wy_hi], -1)[:, :, None, :]
               * torch.stack([wx_lo, wx_hi, wx_lo, wx_hi], -1)[:, None, :, :]) / (s * s)

    def per_bin(t: Tensor) -> Tensor:  # (R, ph*s, pw*s, 4) -> (R*ph*pw, s*s*4), one bin's samples a row
        return t.reshape(n, ph, s, pw, s, 4).permute(0, 1, 3, 2, 4, 5).reshape(n * ph * pw, s * s * 4)

    return per_bin(cols), per_bin(weights)


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix from indices made in range above (torch's invariant checks, a warning if implicit, skipped).

    torch warns once per process that sparse CSR support is in beta; that note is no problem of the user's and
    is silenced here only (``filterwarnings = error`` in the tests would otherwise fail the first call).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class _SparsePooling(torch.autograd.Function):
    """``Y = A @ X`` for ``A`` given by (cols, weights) with a fixed count a row; backward ``A.T @ dY``."""

    @staticmethod
    def forward(ctx, features: Tensor, cols: Tensor, weights: Tensor) -> Tensor:
        n_rows, per_row = cols.shape
        crow = torch.arange(0, n_rows * per_row + 1, per_row, dtype=torch.int64)
        a = _csr(crow, cols.reshape(-1), weights.reshape(-1), (n_rows, features.shape[0]))
        ctx.save_for_backward(cols, weights)
        ctx.n_features = features.shape[0]
        return a @ features

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        cols, weights = ctx.saved_tensors
        flat = cols.reshape(-1)
        order = torch.sort(flat, stable=True).indices  # stable: the same sums in the same order, run after run
        rows = torch.div(order, cols.shape[1], rounding_mode="floor")
        crow = torch.zeros(ctx.n_features + 1, dtype=torch.int64)
        crow[1:] = torch.bincount(flat, minlength=ctx.n_features).cumsum(0)
        a_t = _csr(crow, rows, weights.reshape(-1)[order], (ctx.n_features, cols.shape[0]))
        return a_t @ grad.contiguous(), None, None


class SparseMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's :class:`~torchvision.ops.MultiScaleRoIAlign`, computed by :func:`pooling_matrix` on the CPU.

    Same constructor and result: (R, C, ph, pw) features for the boxes of all images, in their order.
    """

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """Pool ``boxes`` (one float (n_i, 4) tensor an image, image pixels) from the feature maps ``x``."""
        features = [v for k, v in x.items() if k in self.featmap_names]
        if (_setup_scales is None or self.sampling_ratio <= 0 or features[0].device.type != "cpu"
                or torch.jit.is_scripting() or torch.jit.is_tracing()):
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        all_boxes = torch.cat(boxes).float()
        image = torch.cat([torch.full((len(b),), i, dtype=torch.int64) for i, b in enumerate(boxes)])
        level = self.map_levels(boxes).long() if len(features) > 1 else torch.zeros_like(image)
        level = level.clamp(0, len(features) - 1)  # a NaN box's level is garbage (torchvision pools it as zeros)
        sizes = torch.tensor([[f.shape[2], f.shape[3]] for f in features], dtype=torch.float32)
        counts = torch.tensor([f.shape[0] * f.shape[2] * f.shape[3] for f in features], dtype=torch.int64)
        starts = torch.cumsum(counts, 0) - counts
        ph, pw = self.output_size
        with torch.autocast("cpu", enabled=False):  # float32 sums, as torchvision's roi_align under autocast
            cols, weights = pooling_matrix(
                all_boxes, image, torch.tensor(self.scales, dtype=torch.float32)[level], sizes[level, 0],
                sizes[level, 1], starts[level], (ph, pw), self.sampling_ratio)
            stacked = torch.cat([f.float().permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in features])
            pooled = _SparsePooling.apply(stacked, cols, weights)
        return pooled.reshape(len(all_boxes), ph, pw, stacked.shape[1]).permute(0, 3, 1, 2).to(features[0].dtype)
