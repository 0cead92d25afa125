"""How network maps are shown: per-layer maps masked by the foreground, not as solid sheets.

A layering network's "layer_k" maps say, for every pixel, how likely it belongs to an object of layer k; off
the objects those values mean nothing, yet they are often high there, so shown as they are they cover the
image like sheets. Multiplied by the foreground probability they show only where objects are.
"""

from __future__ import annotations

import numpy as np

#: The map that masks the others.
FOREGROUND = "foreground"


def display_maps(arrays: dict[str, np.ndarray], unmasked: set[str] | frozenset = frozenset()) -> dict:
    """The maps as shown: each map not in ``unmasked`` (and not the foreground) times the foreground.

    Parameters
    ----------
    arrays : dict[str, np.ndarray]
        Map name -> float32 array in [0, 1], all of one shape ((H, W) or (Z, H, W)).
    unmasked : set of str
        Maps shown as they are (the family's main maps: foreground, boundary, centroid...).

    Returns
    -------
    dict[str, np.ndarray]
        The same names; masked maps are new float32 arrays, the others the arrays given. Without a
        ``"foreground"`` map, ``arrays`` unchanged.

    Examples
    --------
    >>> fg = np.array([[0.0, 1.0]], np.float32); layer = np.array([[0.9, 0.8]], np.float32)
    >>> display_maps({"foreground": fg, "layer_1": layer})["layer_1"].tolist()
    [[0.0, 0.800000011920929]]
    """
    foreground = arrays.get(FOREGROUND)
    if foreground is None:
        return dict(arrays)
    return {name: array if name == FOREGROUND or name in unmasked
            else np.multiply(array, foreground, dtype=np.float32)
            for name, array in arrays.items()}
