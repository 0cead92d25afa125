"""The interface every model family implements.

A family turns an image into *maps* once (expensive: the network) and maps into *instances* many times
(cheap: post-processing, re-run on every slider move). The widget caches :class:`Maps` and calls
:meth:`Family.postprocess` only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import numpy as np

from .errors import InstanceTunerError
from .evaluation.scoring import scorable, selection_score
from .io.bioimageio_network import PackageNetwork
from .params import params_from_dict
from .progress import CancelToken, Progress
from .sparse_masks import SparseMasks
from .training.loop import supervised_step

__all__ = ["Family", "Instances", "Maps", "scorable"]


@dataclass
class Maps:
    """Per-pixel network outputs for one 2D image, at the image's own resolution.

    Attributes
    ----------
    arrays : dict[str, np.ndarray]
        Map name -> float32 array of shape (H, W) with values in [0, 1]
        (e.g. ``"foreground"``, ``"boundary"``, ``"centroid"``).
    extra : dict
        Family-specific cached outputs that are not images (e.g. boxes and mask logits).
    """

    arrays: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the maps."""
        first = next(iter(self.arrays.values()))
        return first.shape[-2:]


@dataclass
class Instances:
    """The result of post-processing.

    Attributes
    ----------
    labels : np.ndarray
        uint32 (H, W); 0 is background, objects are 1..N. Overlaps are flattened (which object wins an
        overlapping pixel is the family's choice, documented in its ``postprocess``).
    objects : SparseMasks or None
        The N per-object masks (boxes and cropped masks, :class:`~.sparse_masks.SparseMasks`) for families whose
        objects may overlap; object k is label k + 1 where it is not covered. None otherwise.
    scores : np.ndarray or None
        float32 (N,) per-object confidence where the family has one.
    """

    labels: np.ndarray
    objects: SparseMasks | None = None
    scores: np.ndarray | None = None

    @property
    def count(self) -> int:
        """Number of objects: the distinct positive ids of ``labels`` where there are no ``objects``.

        Counted with a histogram of the ids rather than ``np.unique``, whose sort took 15 ms against 3 ms on the
        labels of a 1024x1024 gland image (``benchmarks/postprocess_speed.py --image``): it runs on every slider
        move. Ids that a histogram cannot hold cheaply (negative, above 2**24, or of a type wider than 32 bits)
        fall back to ``np.unique``.
        """
        if self.objects is not None:
            return len(self.objects)
        labels = np.asarray(self.labels)
        top = int(labels.max(initial=0))
        if top <= 0:
            return 0
        if labels.dtype.kind in "ui" and labels.dtype.itemsize <= 4 and top < 2**24 and labels.min() >= 0:
            return int(np.count_nonzero(np.bincount(labels.ravel(), minlength=top + 1)[1:]))
        return int(np.unique(labels[labels > 0]).size)

    @property
    def masks(self) -> np.ndarray | None:
        """bool (N, H, W) dense stack of :attr:`objects` (None without them), made on each access.

        For compatibility and small images only: it allocates N x H x W bytes. No code of the package uses it.
        """
        return None if self.objects is None else self.objects.to_dense()


class Family(ABC):
    """A model family: network maps + post-processing.

    Subclasses set :attr:`name`, :attr:`map_names`, :attr:`Params` (a parameter dataclass, see
    :mod:`.params`), :attr:`TrainOptions` and :attr:`keeps_overlaps`, implement :meth:`network_maps`,
    :meth:`postprocess` and :meth:`build_model` (plus the training hooks), and are listed in :mod:`.registry`.
    """

    name: ClassVar[str]
    map_names: ClassVar[tuple[str, ...]]
    Params: ClassVar[type]
    #: The family's training options: a dataclass whose fields are made with :func:`~.training.options.option`
    #: (each declares its command-line flag, help and type) or are options of the Python API only.
    TrainOptions: ClassVar[type]
    #: Whether :meth:`postprocess` may return per-object masks (``Instances.objects``: objects may overlap; for
    #: some families only with a parameter, e.g. Mask R-CNN's ``allow_overlaps``). Batch runs then write the
    #: object stacks beside the labels.
    keeps_overlaps: ClassVar[bool] = False
    #: Whether training and fine-tuning may run :meth:`training_step` under bfloat16 autocast (``TrainConfig.amp``).
    supports_amp: ClassVar[bool] = True
    #: A shipped model of this family that command-line examples name (None: none).
    example_model: ClassVar[str | None] = None
    #: Arguments of a ``train`` command-line example for this family (None: no example).
    train_example: ClassVar[str | None] = None
    #: Whether the family's batches apply elastic deformation (``AugmentConfig.p_elastic``).
    elastic_augmentation: ClassVar[bool] = False
    #: Entry point of the family's network in bioimage.io packages (see :meth:`package_network`); imports
    #: recognise packages made by other tools as this family's by it. None: the family is not packaged.
    package_callable: ClassVar[str | None] = None
    #: Papers that model packages of this family cite: dicts with ``"text"`` and ``"doi"`` or ``"url"``.
    citations: ClassVar[tuple[dict, ...]] = ()
    #: Keys of the architecture config that act at inference only (limits, not weights): a shipped model's card
    #: may set them (``"test_time"``, see :func:`~.io.checkpoint.with_card_settings`) without new weights.
    test_time_keys: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def build_model(self, config: dict) -> Any:
        """Return an untrained ``torch.nn.Module`` for an architecture config dict."""

    def predict_maps(
        self,
        model: Any,
        image: np.ndarray,
        meta: dict,
        *,
        device: str | None = None,
        tile_size: int | None = None,
        cancel: CancelToken | None = None,
    ) -> Generator[Progress, None, Maps]:
        """Run the network on one 2D image; yields progress, returns :class:`Maps` at the image size.

        ``image`` is (H, W) or (H, W, C) of any real dtype; ``meta`` is the checkpoint's metadata
        (normalisation, input channels, pixel scale). The work is the family's :meth:`network_maps`.
        """
        return (yield from self.network_maps(model, image, meta, device=device, tile_size=tile_size, cancel=cancel))

    @abstractmethod
    def network_maps(self, model: Any, image: np.ndarray, meta: dict, **run: Any) -> Generator[Progress, None, Maps]:
        """:meth:`predict_maps` of this family; ``run`` holds its ``device``, ``tile_size`` and ``cancel``."""

    @abstractmethod
    def postprocess(self, maps: Maps, params: Any) -> Instances:
        """Turn maps into instances; cheap enough to run on every slider move."""

    def package_network(self, meta: dict) -> PackageNetwork:
        """How a model of this family with checkpoint metadata ``meta`` is written to a bioimage.io package.

        Raises
        ------
        InstanceTunerError
            If the family cannot be packaged.
        """
        raise InstanceTunerError(f"the {self.name} family cannot be exported as a bioimage.io package")

    # --- training hooks (optional: a family without them can still segment with given weights) ---

    def architecture(self, options: dict, in_channels: int) -> dict:
        """Validated, complete architecture dict for a new model from user ``options``.

        Raises
        ------
        InstanceTunerError
            If the family cannot be trained here, or an option is invalid.
        """
        raise InstanceTunerError(f"training of family {self.name!r} is not available")

    def train(
        self,
        train_samples: list,
        val_samples: list,
        meta: dict,
        options: Any,
        *,
        resume_path: Any = None,
        cancel: CancelToken | None = None,
    ) -> Generator[Progress, None, tuple[Any, Any]]:
        """Train a new model described by ``meta``; returns (model with best weights, ``TrainResult``).

        ``options`` is a :class:`~.training.jobs.TrainOptions` whose ``family_options`` is an instance of this family's
        :attr:`TrainOptions`; the family may add what it used to ``meta["training"]``. Each step of the
        training loop is :meth:`training_step`.
        """
        raise InstanceTunerError(f"training of family {self.name!r} is not available")

    def training_step(self, model: Any, batch: tuple, loss_fn: Any = None) -> tuple[Any, Any]:
        """One forward pass and loss of training or fine-tuning; :func:`~.training.loop.fit` calls it on every batch.

        Parameters
        ----------
        model : torch.nn.Module
            In training mode, on the batch's device.
        batch : tuple
            What the family's batch maker returns, moved to the device: here ``(x, y, valid)`` with x float32
            (B, C, H, W).
        loss_fn : callable, optional
            ``loss_fn(logits, y, valid) -> (loss, parts)``; default :meth:`default_loss`.

        Returns
        -------
        loss : torch.Tensor
            Scalar float32 with gradients.
        parts : dict or list
            The loss terms (floats) for the progress records.
        """
        return supervised_step(model, batch, loss_fn or self.default_loss())

    def default_loss(self) -> Any:
        """The loss :meth:`training_step` uses when given none."""
        raise InstanceTunerError(f"training of family {self.name!r} is not available")

    def finetune_setup(self, model: Any, meta: dict, pairs: list, settings: Any) -> tuple[Any, Any, list | None]:
        """What :func:`~.training.finetune.finetune` needs: ``(next_batch, training_step, trainable parameters or None)``.

        ``pairs`` are :class:`~.training.finetune.CorrectedImage`; ``model`` is the copy being tuned. With
        ``settings.freeze_encoder`` the family's :meth:`frozen_part` does not train.
        """
        batches = self.finetune_batches(model, meta, pairs, settings)
        params = None
        if settings.freeze_encoder:
            self.frozen_part(model).requires_grad_(False)
            params = [p for p in model.parameters() if p.requires_grad]
        return batches, partial(self.training_step, loss_fn=self.finetune_loss()), params

    def finetune_batches(self, model: Any, meta: dict, pairs: list, settings: Any) -> Any:
        """``next_batch(rng)`` of crops of the corrected images, only inside their checked regions."""
        raise InstanceTunerError(f"fine-tuning the {self.name} family is not available")

    def finetune_loss(self) -> Any:
        """The loss of fine-tuning (default :meth:`default_loss`)."""
        return self.default_loss()

    def frozen_part(self, model: Any) -> Any:
        """The module that fine-tuning keeps fixed when asked to freeze the encoder (default ``model.encoder``)."""
        return model.encoder

    def score(self, pred: Any, reference: Any) -> float:
        """The family's model-selection score of one prediction (higher is better).

        ``pred`` is a label image (H, W) or, for families that keep overlaps, a bool (N, H, W) mask
        stack (see :func:`scorable`). Used to pick the best epoch and by auto-tuning after training.
        Default: the mean of GlaS object F1 and object Dice.
        """
        from .evaluation.metrics import object_dice, object_f1  # deferred: scipy/scikit-image

        return selection_score(object_f1(pred, reference)["f1"], object_dice(pred, reference))

    def default_params(self, meta: dict | None = None) -> Any:
        """Parameters stored in a checkpoint's metadata, else the dataclass defaults."""
        return params_from_dict(self.Params, (meta or {}).get("postprocess", {}))
