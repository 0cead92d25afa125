"""Search post-processing parameters on cached maps to maximise a metric against reference labels.

As the three-branch paper tuned its hyperparameters: a coarse pass over each parameter's range, then
coordinate line searches refining one parameter at a time around the best value. A refining window whose
edge wins is moved there and searched again (up to ``coarse`` times), so the search goes on past it,
within the parameter's range. Only ``family.postprocess`` runs; the network is never called. :func:`range_edges` names the
parameters that ended on an end of their allowed range, where the optimum may lie beyond what the
parameter allows (a front end says so).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import replace

import numpy as np

from ..family import scorable
from ..params import param_specs
from ..progress import CancelToken, Progress


def _candidates(spec, current, rounds_left: int, coarse: int) -> list:
    if spec.kind is bool:
        return [False, True]
    lo, hi = spec.low, spec.high
    if rounds_left > 0:  # coarse: the whole range
        values = np.linspace(lo, hi, coarse)
    else:  # fine: a narrower window around the current value
        half = (hi - lo) / coarse
        values = np.linspace(max(lo, current - half), min(hi, current + half), coarse)
    if spec.kind is int:
        values = np.unique(np.round(values).astype(int))
        return sorted({int(v) for v in values} | {int(current)})
    return sorted({round(float(v), 4) for v in values} | {float(current)})


def range_edges(params, names: list[str] | None = None) -> list[tuple[str, float, str]]:
    """The numeric parameters of ``params`` that sit on an end of their allowed range.

    Returns
    -------
    list of (name, value, "lowest" or "highest")

    Examples
    --------
    >>> from napari_instance_tuner.core.families.three_branch.postprocess import ThreeBranchParams
    >>> range_edges(ThreeBranchParams(fg_threshold=0.0), ["fg_threshold", "boundary_threshold"])
    [('fg_threshold', 0.0, 'lowest')]
    """
    edges = []
    for spec in param_specs(params):
        if spec.kind is bool or (names is not None and spec.name not in names) or spec.low == spec.high:
            continue
        value = getattr(params, spec.name)
        if value <= spec.low or value >= spec.high:
            edges.append((spec.name, value, "lowest" if value <= spec.low else "highest"))
    return edges


def _on_window_edge(spec, values: list, value) -> bool:
    """True if ``value`` is the first or last of a refining window and not an end of the parameter's range."""
    return (spec.kind is not bool and len(values) > 1 and value in (values[0], values[-1])
            and spec.low < value < spec.high)


def autotune(
    postprocess: Callable,
    maps_list: list,
    references: list,
    params,
    score: Callable[[np.ndarray, object], float],
    *,
    names: list[str] | None = None,
    rounds: int = 2,
    coarse: int = 7,
    cancel: CancelToken | None = None,
    combine: Callable[[list], float] | None = None,
) -> Generator[Progress, None, tuple[object, float, float]]:
    """Coordinate search over post-processing parameters.

    Parameters
    ----------
    postprocess : callable
        ``postprocess(maps, params) -> Instances`` of the family.
    maps_list : list[Maps]
        Cached maps, one per image.
    references : list
        Reference labels (H, W) or instance stacks, one per image.
    params : dataclass
        Starting parameters.
    score : callable
        ``score(pred, reference) -> float`` where ``pred`` is the label image, or the bool (N, H, W)
        mask stack for families that keep overlaps; higher is better; averaged over images (or any per-image
        result that ``combine`` takes).
    names : list of str, optional
        Parameters to tune (default: all).
    rounds : int
        Passes over all parameters; the first is coarse (whole range), later ones refine.
    coarse : int
        Values tried per parameter and pass.
    combine : callable, optional
        ``combine(per_image_results) -> float``: the trial's score from the images' ``score`` results (default:
        their mean); e.g. :func:`~.scoring.pooled_selection_score` of :func:`~.metrics.glas_terms` results
        (:func:`~.scoring.tuning_objective` gives both).

    Returns
    -------
    best_params, score_before, score_after
    """

    def evaluate(p) -> float:
        results = [score(scorable(postprocess(m, p)), r) for m, r in zip(maps_list, references)]
        return float(np.mean(results) if combine is None else combine(results))

    specs = [s for s in param_specs(params) if names is None or s.name in names]
    best = params
    before = best_score = evaluate(best)
    plan = [(r, s) for r in range(rounds) for s in specs]
    def try_value(name: str, value) -> bool:
        """Score ``best`` with ``name = value``; keep it if better. True if kept."""
        nonlocal best, best_score
        if cancel is not None:
            cancel.check()
        trial = replace(best, **{name: value})
        s = evaluate(trial)
        if s > best_score + 1e-9:
            best, best_score = trial, s
            return True
        return False

    for i, (r, spec) in enumerate(plan):
        current = getattr(best, spec.name)
        values = _candidates(spec, current, rounds - 1 - r, coarse)
        for value in values:
            if value != current:
                try_value(spec.name, value)
        for _ in range(coarse if rounds - 1 - r == 0 else 0):  # refining: widen while an edge of it wins
            if not _on_window_edge(spec, values, getattr(best, spec.name)):
                break
            current = getattr(best, spec.name)
            values = _candidates(spec, current, 0, coarse)  # the same window, centred on the edge that won
            for value in values:
                if value != current:
                    try_value(spec.name, value)
        yield Progress(i + 1, len(plan), f"tuned {spec.name}", {"score": best_score, "param": spec.name})
    return best, before, best_score
