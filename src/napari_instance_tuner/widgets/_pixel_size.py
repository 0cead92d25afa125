"""Pixel size of an image layer and of the model, for the Segment widget (what it reads and what it says)."""

from __future__ import annotations

from typing import Any

from ..core.inference.resample import model_pixel_size, scale_factor

_MICRONS = ("µm", "um", "micrometer", "micron", "micrometre")


def layer_pixel_size(layer: Any, override: float = 0.0) -> float | None:
    """µm per level-0 pixel of an image layer: ``override`` when > 0, else what the slide reader recorded
    (``metadata["pixel_size_um"]``), else the layer's scale when its units are micrometres; None if unknown."""
    if override and override > 0:
        return float(override)
    recorded = (getattr(layer, "metadata", None) or {}).get("pixel_size_um")
    if recorded:
        return float(recorded)
    units = [str(u) for u in (getattr(layer, "units", None) or ())]
    if units and units[-1] in _MICRONS:
        return float(layer.scale[-1])
    return None


def level_data(layer: Any) -> list:
    """The layer's levels, largest first (one for a single-scale layer)."""
    return list(layer.data) if layer.multiscale else [layer.data]


def describe(loaded: Any, layer: Any, override: float = 0.0) -> str:
    """One line for the widget: the model's and the image's pixel size and what a run does with them."""
    if loaded is None or layer is None:
        return ""
    model_um, image_um = model_pixel_size(loaded.meta), layer_pixel_size(layer, override)
    model = f"model {model_um:g} µm/px" if model_um else "model: pixel size not recorded"
    image = f"image {image_um:g} µm/px" if image_um else "image: pixel size unknown"
    factor = scale_factor(image_um, model_um)
    if image_um is None and model_um is not None:
        action = "taken to be the model's"
    elif factor != 1.0:
        action = f"resampled {1 / factor:.3g}x, labels in image pixels"
    else:
        action = "used as it is"
    return f"{model}; {image}: {action}"
