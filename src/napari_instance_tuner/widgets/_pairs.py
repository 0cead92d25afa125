"""The fine-tune widget's list of training pairs: (image, corrected Labels, checked regions, held-out region).

The list holds layers, not arrays: a pair's data is read when training starts (:meth:`Pair.capture`,
on the GUI thread, cheap) and turned into a :class:`~..core.training.finetune.CorrectedImage` in the worker
(:meth:`PairData.corrected`, which reads the arrays and rasterises the regions with
:mod:`..core.training.regions`). Removing a layer from the viewer drops the pairs that use it. A held-out region
(another Shapes layer) is kept out of training and scored during it (see :mod:`..core.training.finetune`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from magicgui.widgets import ComboBox, Container, PushButton, Select

from ..core.errors import InstanceTunerError
from ..core.training.regions import check_pair_shapes, corrected_pair, rasterise, to_pixels
from ._layers import source_images
from ._worker import error_message, notify_error


@dataclass
class ShapesData:
    """A Shapes layer's shapes and coordinates when training started."""

    name: str
    vertices: list
    types: list
    scale: tuple = (1.0, 1.0)
    translate: tuple = (0.0, 0.0)

    @classmethod
    def of(cls, layer: Any) -> ShapesData:
        """Copy the shapes of a napari Shapes layer."""
        return cls(layer.name, [v.copy() for v in layer.data], list(layer.shape_type), tuple(layer.scale),
                   tuple(layer.translate))

    def mask(self, shape: tuple[int, int], image_scale: tuple, image_translate: tuple) -> Any:
        """bool (H, W) union of the shapes on the image's pixel grid (see :mod:`..core.training.regions`)."""
        if not self.vertices:
            raise InstanceTunerError(f"the Shapes layer {self.name!r} has no shapes")
        pixels = [to_pixels(v, self.scale, self.translate, image_scale, image_translate) for v in self.vertices]
        return rasterise(pixels, self.types, shape)


@dataclass
class PairData:
    """What a pair's layers held when training started (array references, no copies)."""

    name: str
    image: Any
    rgb: bool
    labels: Any
    regions: ShapesData | None = None
    holdout: ShapesData | None = None
    image_scale: tuple = (1.0, 1.0)
    image_translate: tuple = (0.0, 0.0)

    def corrected(self) -> Any:
        """The validated :class:`~..core.training.finetune.CorrectedImage` (reads the data; run it in a worker)."""
        import numpy as np


        try:
            shape = check_pair_shapes(np.shape(self.image), self.rgb, np.shape(self.labels))
            where = (self.image_scale, self.image_translate)
            region = None if self.regions is None else self.regions.mask(shape, *where)
            pair = corrected_pair(self.image, self.labels, self.rgb, region)
            if self.holdout is not None:
                pair.holdout = self.holdout.mask(shape, *where)
                if not pair.holdout.any():
                    raise InstanceTunerError(
                        f"the held-out region {self.holdout.name!r} does not overlap the image: draw it on the image"
                    )
            return pair
        except InstanceTunerError as exc:
            raise InstanceTunerError(f"pair {self.name}: {exc}") from None


@dataclass(eq=False)  # identity: two pairs are never "equal" list entries
class Pair:
    """One training pair of layers.

    ``regions`` (checked regions) and ``holdout`` (a held-out validation region) are Shapes layers or
    None: train on the whole image, validate nowhere.
    """

    image: Any
    labels: Any
    regions: Any = None
    holdout: Any = None

    def describe(self) -> str:
        """"image ← labels [in shapes] [, held out: shapes]"."""
        where = f" in {self.regions.name}" if self.regions is not None else ""
        held = f", held out: {self.holdout.name}" if self.holdout is not None else ""
        return f"{self.image.name} ← {self.labels.name}{where}{held}"

    def uses(self, layer: Any) -> bool:
        """True if ``layer`` is one of the pair's layers."""
        parts = (self.image, self.labels, self.regions, self.holdout)
        return any(part is not None and part == layer for part in parts)

    def capture(self) -> PairData:
        """The layers' current data and coordinates, for :meth:`PairData.corrected`."""
        image, labels = self.image, self.labels
        return PairData(
            name=repr(self.describe()),
            image=image.data[0] if image.multiscale else image.data,
            rgb=bool(image.rgb),
            labels=labels.data[0] if labels.multiscale else labels.data,
            regions=None if self.regions is None else ShapesData.of(self.regions),
            holdout=None if self.holdout is None else ShapesData.of(self.holdout),
            image_scale=tuple(image.scale),
            image_translate=tuple(image.translate),
        )


class PairList:
    """Combo boxes to choose a pair, Add / Remove buttons, and the list of chosen pairs.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Whose layers are offered.
    """

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.pairs: list[Pair] = []
        self.image = ComboBox(label="image", choices=self._images)
        self.labels = ComboBox(label="corrected labels", choices=self._labels)
        self.labels.tooltip = "A Labels layer holding the corrected objects of the image"
        self.regions = ComboBox(label="checked regions", choices=self._shapes)
        self.regions.tooltip = "Train only inside these rectangles / polygons (a Shapes layer); none: the whole image"
        self.holdout = ComboBox(label="held-out region", choices=partial(self._shapes, none="none (no validation)"))
        self.holdout.tooltip = (
            "Rectangles / polygons (a Shapes layer) never trained on: their corrected objects are segmented and "
            "scored during fine-tuning, and the best-scoring weights are kept"
        )
        self.add_button = PushButton(text="Add pair")
        self.add_button.changed.connect(lambda *_: self.add())
        self.remove_button = PushButton(text="Remove")
        self.remove_button.changed.connect(lambda *_: self.remove_selected())
        self.list = Select(choices=self._listed)
        self.list.native.setMaximumHeight(90)
        choose = Container(widgets=[self.image, self.labels, self.regions, self.holdout], labels=True)
        buttons = Container(widgets=[self.add_button, self.remove_button], layout="horizontal", labels=False)
        self.widget = Container(widgets=[choose, buttons, self.list], labels=False)

    def add(self) -> Pair | None:
        """Add the chosen (image, labels, regions, held-out region) as a pair; problems become notifications."""
        image, labels, regions, holdout = self.image.value, self.labels.value, self.regions.value, self.holdout.value
        if image is None or labels is None:
            notify_error("choose an image layer and its corrected Labels layer to add a pair")
            return None
        try:
            check_pair_shapes(tuple(image.data[0].shape if image.multiscale else image.data.shape), image.rgb,
                              tuple(labels.data[0].shape if labels.multiscale else labels.data.shape))
        except InstanceTunerError as exc:
            notify_error(f"cannot pair {image.name!r} with {labels.name!r}: {error_message(exc)}")
            return None
        if holdout is not None and holdout == regions:
            notify_error(f"{holdout.name!r} cannot be both the checked and the held-out region: draw the held-out "
                         "part in its own Shapes layer")
            return None
        pair = Pair(image, labels, regions, holdout)
        if any(p.describe() == pair.describe() for p in self.pairs):
            return None
        self.pairs.append(pair)
        self.refresh()
        return pair

    def remove_selected(self) -> None:
        """Remove the pairs selected in the list (the last one added when none is selected)."""
        chosen = list(self.list.value) or self.pairs[-1:]
        self.pairs = [p for p in self.pairs if not any(p is c for c in chosen)]
        self.refresh()

    def forget(self, layer: Any) -> None:
        """Drop the pairs that use ``layer`` (it left the viewer)."""
        self.pairs = [p for p in self.pairs if not p.uses(layer)]
        self.refresh()

    def refresh(self) -> None:
        """Update the layer choices and the listed pairs."""
        for combo in (self.image, self.labels, self.regions, self.holdout, self.list):
            combo.reset_choices()

    def _images(self, *_: Any) -> list:
        return [(layer.name, layer) for layer in source_images(self.viewer)]

    def _labels(self, *_: Any) -> list:
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _shapes(self, *_: Any, none: str = "none (whole image)") -> list:
        from napari.layers import Shapes

        return [(none, None)] + [
            (layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Shapes)
        ]

    def _listed(self, *_: Any) -> list:
        return [(pair.describe(), pair) for pair in self.pairs]
