"""Synthetic annotated images generated on the fly: glands (H&E), nuclei (fluorescence), crossing worms.

They stand in for the real data sets, which may not be shipped: sample data in napari, the quick-start
demo and the tests all use them. Each generator is deterministic for a given ``seed`` and fast
(well under a second for 512 x 768). Only numpy, scipy and scikit-image are used. One module per scene
(:mod:`.glands`, :mod:`.nuclei`, :mod:`.worms`) over shared drawing helpers
(:mod:`.shapes`); this module gathers the three generators.

- :func:`synthetic_glands` imitates GlaS colon histology at its native scale: pink eosin stroma with
  fibres and scattered nuclei; glands as rings of purple epithelium with dark basal nuclei around a pale
  lumen; irregular shapes, some glands touching, white retraction gaps around some.
- :func:`synthetic_nuclei` imitates fluorescence nuclei (DSB 2018): textured grey blobs, many touching.
- :func:`synthetic_worms` imitates BBBC010 brightfield C. elegans: dark worms in a bright well, some
  crossing, with exact per-worm masks.

Examples
--------
>>> rgb, labels = synthetic_glands((128, 128), seed=1)
>>> rgb.shape, rgb.dtype, labels.dtype
((128, 128, 3), dtype('uint8'), dtype('uint16'))
"""

from __future__ import annotations

from .glands import synthetic_glands
from .nuclei import synthetic_nuclei
from .worms import synthetic_worms

__all__ = ["synthetic_glands", "synthetic_nuclei", "synthetic_worms"]
