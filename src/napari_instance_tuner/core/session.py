"""The state of one segmentation, headless: this image, this model, these maps, these parameters, these labels.

A :class:`SegmentSession` is what the Segment widget, the other dock widgets, the batch command and a Python
script all drive (no Qt, no napari): ``run()`` computes the expensive network maps once and post-processes
them; ``postprocess(params)`` re-runs only the cheap post-processing on the cached maps (what a slider move
calls); ``get_state()`` / ``set_state()`` turn the run into a recipe and back. The interface follows
micro-sam's ``initialize(image)`` / ``generate(**params)``.

Example
-------
>>> from napari_instance_tuner.core.io.checkpoint import load_model            # doctest: +SKIP
>>> from napari_instance_tuner.core.progress import run as drive            # doctest: +SKIP
>>> session = SegmentSession(image, name="slide 1")                           # doctest: +SKIP
>>> labels = drive(session.run(load_model("glas"))).labels                  # doctest: +SKIP
>>> fewer = session.postprocess(replace(session.params, min_size=500))      # doctest: +SKIP

Large images (more pixels than fit, multiscale slides) are streamed tile by tile instead
(:meth:`SegmentSession.run_streamed`): no maps are cached, the labels land in a zarr pyramid.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InstanceTunerError
from .inference.slide_segment import segment_at_model_scale
from .inference.stack import StackInstances, StackMaps, postprocess_stack, predict_stack
from .io.pyramid import LEVEL0, write_label_pyramid
from .io.recipe import build_recipe, recipe_device, recipe_model, recipe_params
from .params import params_to_dict
from .progress import CancelToken, Progress
from .sparse_masks import SparseMasks


@dataclass
class StreamedRun:
    """What a streamed run leaves: labels on disk, no maps.

    Attributes
    ----------
    count : int
        Number of objects.
    tiles : int
        Number of tiles the run took.
    path : Path
        The zarr group of the label pyramid: level k, uint32 (ceil(h / 2**k), ceil(w / 2**k)), is array "k".
    settings : StreamSettings
        How the image was cut (tile, halo).
    levels : list of array-like
        The pyramid's levels, largest first (zarr arrays).
    factor : float
        Image (level-0) pixels per label pixel: the labels are at the model's pixel size.
    offset : (float, float)
        (y, x) of the segmented region's origin in the image's level-0 pixels.
    """

    count: int
    tiles: int
    path: Path
    settings: Any
    levels: list = field(default_factory=list)
    factor: float = 1.0
    offset: tuple = (0.0, 0.0)


class SegmentSession:
    """One image's segmentation: image, model, cached maps, parameters, labels and corrections.

    Parameters
    ----------
    image : array-like, optional
        (H, W), (H, W, C), a stack (Z, H, W) or an RGB stack (Z, H, W, C); numpy, dask or zarr. May be set
        later (:meth:`set_image`).
    rgb : bool or None
        Whether the last axis holds colour channels (napari's ``layer.rgb``); the image may then be a stack.
        None: the image is one 2D image whatever its shape, handed to the family as it is (files, the CLI).
    name : str
        The image's name, recorded in recipes.
    pixel_size_um : float or None
        µm per pixel of the image (level 0); None where unknown.

    Attributes
    ----------
    model : LoadedModel or None
        The model of the maps and labels.
    maps : StackMaps or None
        Cached network outputs (float32 maps); None before a run and after a streamed one.
    params : dataclass or None
        The family's post-processing parameters of the labels (``instances``).
    instances : StackInstances or None
        The labels (uint32 (H, W) or (Z, H, W)), count, and for overlapping families the objects (boxes and crops)
        and scores float32 (K,).
    device : str
        The torch device the maps were computed on.
    image_shape : tuple of int
        Shape of the image data of the last run.
    streamed : StreamedRun or None
        The last run, when it was streamed (large images); then ``maps`` and ``instances`` are None.
    corrections : np.ndarray or None
        The user's corrected labels of this image (same shape as the labels), where a front end records them.
    """

    def __init__(self, image: Any = None, *, rgb: bool | None = None, name: str = "image",
                 pixel_size_um: float | None = None) -> None:
        self.image, self.rgb, self.name, self.pixel_size_um = image, rgb, str(name), pixel_size_um
        self.model: Any = None
        self.maps: StackMaps | None = None
        self.params: Any = None
        self.instances: StackInstances | None = None
        self.device = "cpu"
        self.tile_size: int | None = None
        self.image_shape: tuple = ()
        self.streamed: StreamedRun | None = None
        self.corrections: np.ndarray | None = None

    # -- what the session holds -------------------------------------------------------------------

    def set_image(self, image: Any, *, rgb: bool | None = None, name: str | None = None,
                  pixel_size_um: float | None = None) -> SegmentSession:
        """Replace the image the next run segments (the cached maps stay until then); returns self."""
        self.image, self.rgb = image, rgb
        if name is not None:
            self.name = str(name)
        self.pixel_size_um = pixel_size_um
        return self

    @property
    def family(self) -> Any:
        """The model's family, or None without a model."""
        return None if self.model is None else self.model.family

    @property
    def labels(self) -> np.ndarray | None:
        """uint32 labels (H, W) or (Z, H, W) of the last run or post-processing; None after a streamed run."""
        return None if self.instances is None else self.instances.labels

    @property
    def objects(self) -> SparseMasks | None:
        """The K per-object masks behind the labels as boxes and crops (overlapping families, 2D images), else None."""
        return None if self.instances is None else self.instances.objects

    @property
    def scores(self) -> np.ndarray | None:
        """float32 (K,) per-object scores of the labels where the family has them, else None."""
        return None if self.instances is None else self.instances.scores

    @property
    def count(self) -> int:
        """Number of objects of the labels shown (0 before a run)."""
        if self.streamed is not None:
            return int(self.streamed.count)
        return 0 if self.instances is None else int(self.instances.count)

    @property
    def has_maps(self) -> bool:
        """Whether post-processing can run (the maps of a non-streamed run are cached)."""
        return self.maps is not None and self.model is not None

    # -- the expensive network, once ----------------------------------------------------------------

    def run(self, model: Any = None, params: Any = None, *, device: str | None = None,
            tile_size: int | None = None, cancel: CancelToken | None = None,
            ) -> Generator[Progress, None, StackInstances]:
        """Compute the maps of :attr:`image` with ``model`` and post-process them; yields progress.

        Parameters
        ----------
        model : LoadedModel, optional
            Default: the session's model (from :meth:`set_state` or an earlier run).
        params : dataclass, optional
            The family's post-processing parameters; default the session's (if of this family), else the
            model's defaults.
        device : str, optional
            A torch device ("cpu", "cuda", ...), as chosen by :func:`.inference.predict.choose_device`; default the
            session's.
        tile_size : int, optional
            Network tile side; default the model's.
        cancel : CancelToken, optional
            Checked between tiles and before the result is kept.

        Returns
        -------
        StackInstances
            The labels; the session now holds the model, maps, parameters and labels (only when the whole
            run succeeded: a failed or cancelled run leaves the session as it was).
        """
        model = self.model if model is None else model
        if model is None or self.image is None:
            raise InstanceTunerError("nothing to segment: the session needs an image and a model")
        family = model.family
        if params is None:
            same = self.params is not None and self.model is not None and self.model.family.name == family.name
            params = self.params if same else family.default_params(model.meta)
        device = self.device if device is None else device
        tile_size = self.tile_size if tile_size is None else tile_size
        data = self.image
        if self.rgb is None:  # one 2D image, as the family takes it
            maps = yield from family.predict_maps(model.model, np.asarray(data), model.meta, device=device,
                                                  tile_size=tile_size, cancel=cancel)
            stack = StackMaps(slices=[maps], stacked=False)
        else:
            stack = yield from predict_stack(family, model.model, data, self.rgb, model.meta, device=device,
                                             tile_size=tile_size, cancel=cancel)
        if cancel is not None:
            cancel.check()
        instances = postprocess_stack(family, stack, params)
        if cancel is not None:
            cancel.check()
        self.model, self.maps, self.params, self.instances = model, stack, params, instances
        self.device, self.tile_size, self.image_shape = device, tile_size, tuple(np.shape(data))
        self.streamed = None
        return instances

    def run_streamed(self, model: Any, source: Any, params: Any, out: str | Path, *,
                     roi: tuple[int, int, int, int] | None = None, settings: Any = None, device: str | None = None,
                     cancel: CancelToken | None = None, skip_background: bool = False, min_size: int = 512,
                     ) -> Generator[Progress, None, StreamedRun]:
        """Segment a large image tile by tile into the zarr group ``out``, then write its pyramid; yields progress.

        Parameters
        ----------
        model : LoadedModel
        source : SourceImage
            The image, opened lazily (:func:`.inference.slide_segment.source_from_levels`).
        params : dataclass
        out : path
            A zarr group that does not exist yet; level 0 is its array "0".
        roi : (int, int, int, int), optional
            (y, x, h, w) region in level-0 pixels.
        settings : StreamSettings, optional
        device : str, optional
        cancel : CancelToken, optional
        skip_background : bool
            Never run the tiles without tissue (slides).
        min_size : int
            The smallest pyramid level has no side longer than this (at least 2 levels are written).

        Returns
        -------
        StreamedRun
            Also kept as :attr:`streamed`; no maps are cached (the cached maps of an earlier run are dropped).
        """
        out = Path(out)
        device = self.device if device is None else device
        result = yield from segment_at_model_scale(model, source, params, roi=roi, out=out / LEVEL0,
                                                   settings=settings, device=device, cancel=cancel,
                                                   skip_background=skip_background)
        # napari needs 2 levels; written here once, so drawing never reads all of level 0
        levels = yield from write_label_pyramid(out, min_size, min_levels=2, cancel=cancel)
        streamed = StreamedRun(count=result.count, tiles=result.tiles, path=out, settings=settings, levels=levels,
                               factor=result.frame.factor, offset=result.frame.offset)
        self.model, self.params, self.device, self.streamed = model, params, device, streamed
        self.maps = self.instances = None
        self.tile_size = None if settings is None else settings.network_tile
        self.image_shape = tuple(np.shape(source.levels[0]))
        return streamed

    # -- the cheap post-processing, on every slider move -----------------------------------------------

    def postprocess(self, params: Any) -> StackInstances:
        """Re-run only post-processing on the cached maps with ``params``; returns (and keeps) the labels.

        Raises
        ------
        InstanceTunerError
            If there are no cached maps (no run yet, or a streamed run).
        """
        maps, model = self.maps, self.model
        if maps is None or model is None:
            raise InstanceTunerError("no cached maps: run the network first (large, streamed images keep none)")
        instances = postprocess_stack(model.family, maps, params)
        if self.maps is maps:  # a newer run did not replace the maps meanwhile (post-processing runs in a thread)
            self.params, self.instances = params, instances
        return instances

    # -- recipes ----------------------------------------------------------------------------------------

    def record(self) -> dict:
        """The run as plain values: :data:`.io.recipe.LAYER_KEYS` and ``"role"`` (what a Labels layer records).

        Streamed runs also record ``"streaming"`` (tile, halo, amp).
        """
        if self.model is None:
            raise InstanceTunerError("nothing to record: the session has not run")
        record = {
            "role": "instances",
            "weights_path": str(self.model.path),
            "weights_sha256": self.model.sha256,
            "family": self.model.family.name,
            "params": params_to_dict(self.params),
            "device": self.device,
            "tile_size": self.tile_size,
            "image_name": self.name,
            "image_shape": list(self.image_shape),
        }
        if self.streamed is not None and self.streamed.settings is not None:
            record["streaming"] = self.streamed.settings.to_dict()
        return record

    def get_state(self) -> dict:
        """The recipe of the labels (:mod:`.io.recipe`): weights, family, parameters, tiling, device, image."""
        streaming = None if self.streamed is None or self.streamed.settings is None else \
            self.streamed.settings.to_dict()
        return build_recipe(weights_path=self.model.path, weights_sha256=self.model.sha256,
                            family=self.model.family.name, params=params_to_dict(self.params),
                            image_name=self.name, image_shape=self.image_shape, device=self.device,
                            tile_size=self.tile_size, meta=self.model.meta, streaming=streaming)

    def set_state(self, recipe: dict, *, loaded: Any = None, device: str | None = None,
                  weights: Any = None) -> SegmentSession:
        """Take a recipe's model (SHA-256 checked), parameters, device and tiling; returns self.

        Parameters
        ----------
        recipe : dict
            From :func:`.io.recipe.load_recipe` or :meth:`get_state`.
        loaded : LoadedModel, optional
            The recipe's model, already loaded (:func:`.io.recipe.recipe_model`).
        device : str, optional
            Overrides the recorded device; the recorded one when available, else the CPU.
        weights : path-like, optional
            The weights file, when it has moved.
        """
        if loaded is None:
            loaded = recipe_model(recipe, weights)
        device = recipe_device(recipe) if device is None else device
        self.model, self.params, self.device = loaded, recipe_params(recipe, loaded), device
        self.tile_size = (recipe.get("tiling") or {}).get("tile_size")
        self.maps = self.instances = self.streamed = None
        return self
