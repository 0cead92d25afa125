"""Instance-segmentation metrics: GlaS object-level F1 / Dice / Hausdorff, pixel Dice / IoU, AP, AJI.

Every function is pure and headless: only numpy and scipy are used, never torch, Qt or napari.

Inputs
------
Every metric takes a prediction and a ground truth, each given as **either**

* a *label image*: an integer array of shape ``(H, W)``, ``0`` = background, every other value is
  one object (labels need not be contiguous: ``{0, 3, 17}`` are two objects). Objects cannot
  overlap. A float array is accepted only when all its values are finite non-negative integers
  (e.g. a label image read back as ``float32``), **or**
* an *instance stack*: a boolean array of shape ``(N, H, W)`` (or an integer/float array holding
  only 0 and 1), one mask per object; masks may overlap (used by the layering family). All-False
  masks are padding and are dropped (they are not objects), **or**
* a :class:`~napari_instance_tuner.core.sparse_masks.SparseMasks`: per-object boxes and cropped masks (what
  the overlapping families return); treated as the stack it stands for, without ever building it (the
  pixels are gathered from the crops, so memory follows the objects' area, not N x H x W).

The two may be mixed (a label-image prediction against a stack ground truth). Both must have the
same spatial shape ``(H, W)``. Anything else raises
:class:`~napari_instance_tuner.core.errors.InputImageError` (a ``ValueError``). A 2-D *boolean*
array is refused by the object-level metrics (it is a semantic mask, not instances; label it
first, e.g. with ``skimage.measure.label``) and accepted by :func:`pixel_dice` / :func:`pixel_iou`.

Object order and ties
---------------------
Objects of a label image are ordered by label value, objects of a stack by their index. Whenever a
"best" partner is chosen (largest intersection, largest IoU, smallest Hausdorff distance) and
several candidates tie, the one that comes first wins; this is what MATLAB's ``mode`` / ``max`` /
``min`` do in the official GlaS and MoNuSeg code, which pick the smallest label.

Intersections
-------------
All object metrics derive from one sparse ``N_pred x N_gt`` intersection matrix (only the
non-zero entries are stored): label image x label image by ``np.bincount`` on paired labels, a
stack against a label image by gathering the labels under the stack's pixels, stack x stack by a
``scipy.sparse`` product of the flattened masks. See :func:`intersection_matrix`.

Sources
-------
[GlaS]  K. Sirinukunwattana et al., "Gland segmentation in colon histology images: The GlaS
        challenge contest", Medical Image Analysis 35 (2017) 489-502, and the challenge's
        "Evaluation" page (warwick.ac.uk/fac/cross_fac/tia/data/glascontest/evaluation/,
        mirrored at glas.grand-challenge.org/Evaluation).
[GlaS-code] The official MATLAB evaluation code ``evaluation_v6.zip`` (``F1score.m``,
        ``ObjectDice.m``, ``ObjectHausdorff.m``, ``Hausdorff.m``) as translated line by line in
        public Python ports (e.g. the ``GlaS metrics, translated from the official Matlab code``
        files derived from DIAGNijmegen/neural-odes-segmentation).
[GlaS-GC] The grand-challenge.org evaluation container of GlaS (github.com/HansPinckaers/glas,
        ``evaluation.py`` + ``metrics_utils.py``): dataset-level pooling, see :func:`aggregate`.
[DSB]   Kaggle 2018 Data Science Bowl metric: at IoU threshold t a prediction and a ground-truth
        object match when IoU > t; AP_t = TP / (TP + FP + FN); score = mean over
        t in {0.5, 0.55, ..., 0.95}. The layering paper uses t in {0.5, 0.6, 0.7, 0.8, 0.9}.
[AJI]   N. Kumar et al., "A dataset and a technique for generalized nuclear segmentation for
        computational pathology", IEEE TMI 36(7) (2017) 1550-1560, and the MoNuSeg organisers'
        ``aggregated_jaccard_index.m`` (final version distributed 2018-07-17).

Modules
-------
The public names are re-exported from small modules, one topic each (``_``-prefixed ones hold private helpers):

* :mod:`._instances`: input parsing and validation, :func:`to_stack`;
* :mod:`._intersections`: the sparse intersection matrix (:func:`intersection_matrix`) and
  best-partner matching;
* :mod:`._hausdorff`: the exact, pruned Hausdorff-distance engine (private);
* :mod:`.glas`: the GlaS challenge metrics :func:`object_f1`, :func:`object_dice`,
  :func:`object_hausdorff`, :func:`hausdorff_distance`;
* :mod:`.pixel`: :func:`pixel_dice`, :func:`pixel_iou`;
* :mod:`.detection`: :func:`average_precision` (:data:`DEFAULT_AP_THRESHOLDS`), :func:`dsb_score`
  (:data:`DSB_THRESHOLDS`) and
  :func:`aggregated_jaccard_index` (alias :func:`aji`);
* :mod:`.summary`: :func:`evaluate`, :func:`aggregate`, :data:`EVALUATE_KEYS`, :data:`AGGREGATE_KEYS`;
  :func:`glas_terms` and :func:`pooled_f1_dice` (the pooled GlaS F1 and Dice alone, for auto-tuning).
"""

from __future__ import annotations

from ._instances import to_stack
from ._intersections import intersection_matrix
from .detection import (
    DEFAULT_AP_THRESHOLDS,
    DSB_THRESHOLDS,
    aggregated_jaccard_index,
    aji,
    average_precision,
    dsb_score,
)
from .glas import hausdorff_distance, object_dice, object_f1, object_hausdorff
from .pixel import pixel_dice, pixel_iou
from .summary import AGGREGATE_KEYS, EVALUATE_KEYS, GLAS_TERM_KEYS, aggregate, evaluate, glas_terms, pooled_f1_dice

__all__ = [
    "AGGREGATE_KEYS",
    "DEFAULT_AP_THRESHOLDS",
    "DSB_THRESHOLDS",
    "EVALUATE_KEYS",
    "GLAS_TERM_KEYS",
    "aggregate",
    "aggregated_jaccard_index",
    "aji",
    "average_precision",
    "dsb_score",
    "evaluate",
    "glas_terms",
    "hausdorff_distance",
    "intersection_matrix",
    "object_dice",
    "object_f1",
    "object_hausdorff",
    "pixel_dice",
    "pixel_iou",
    "pooled_f1_dice",
    "to_stack",
]
