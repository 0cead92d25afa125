"""Mask R-CNN family: registry entry point tying model, tiled detection and live post-processing together."""

from __future__ import annotations

import numpy as np

from ...family import Family, Instances, Maps
from ...inference.predict import choose_device
from ...io.bioimageio_network import PackageNetwork
from ...training.llvm_guard import prepare_torch_training
from .loss import DetectionLoss
from .postprocess import MaskRCNNParams, postprocess, score_map
from .tiling import Detections, detect_tiled
from .train import MaskRCNNTrainOptions, finetune_batches, train_maskrcnn


class MaskRCNNFamily(Family):
    """torchvision Mask R-CNN (DSB2018 nuclei report; MaskPlus biased training as an option).

    ``predict_maps`` caches permissive detections (boxes, scores, 28 x 28 mask probabilities) and a display
    map; every parameter of :class:`.postprocess.MaskRCNNParams` is then applied live without the network.
    """

    name = "maskrcnn"
    map_names = ("score_map",)
    Params = MaskRCNNParams
    TrainOptions = MaskRCNNTrainOptions
    keeps_overlaps = True
    package_callable = "MaskRCNNScoreMap"
    test_time_keys = ("rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "box_detections_per_img")
    citations = (
        {"text": "He K., Gkioxari G., Dollár P., Girshick R. Mask R-CNN. ICCV 2017.", "doi": "10.1109/ICCV.2017.322"},
    )

    def build_model(self, config: dict):
        """An untrained :class:`~.model.InstanceMaskRCNN` for an architecture dict (see ``MaskRCNNConfig``)."""
        prepare_torch_training()  # torchvision imports Triton: see llvm_guard (napari's OpenGL LLVM)
        from .model import build_maskrcnn  # deferred: torch(vision)

        return build_maskrcnn(config)

    def network_maps(self, model, image: np.ndarray, meta: dict, *, device=None, tile_size=None, cancel=None):
        """Detect objects tile by tile (see :mod:`.tiling`) and cache them for :func:`.postprocess.postprocess`.

        ``image`` is normalised, rescaled by ``meta["pixel_scale"]``, repeated to 3 channels if grey and,
        if the architecture says so, equalised (CLAHE). ``meta["tile_size"]`` (512) and
        ``meta["tile_overlap"]`` (64) set the tiling at network scale. Test-time flips are not used.
        ``meta["inference_amp"]`` (default True) runs the detector's convolutions under bfloat16 autocast
        where the CPU has native bfloat16 (AVX512-BF16 or AMX; float16 on CUDA; elsewhere float32; see
        :func:`~...inference.stream_tile.inference_autocast` and :meth:`.model.InstanceMaskRCNN.detect`),
        and the network and its tiles in channels_last memory (False: float32, contiguous). On the CPU, torch
        runs with the threads of :func:`~...inference.cpu.inference_threads`.

        Returns
        -------
        Maps
            ``arrays["score_map"]`` float32 (H, W) in [0, 1] (max of mask probability x score);
            ``extra`` as :meth:`.tiling.Detections.to_extra`, boxes in pixels of the input image.
        """
        prepare_torch_training()  # torchvision imports Triton: see llvm_guard (napari's OpenGL LLVM)
        import torch  # deferred: torch

        from ...inference.cpu import cpu_threads, inference_threads  # deferred: only at inference
        from ...inference.stream_tile import inference_autocast  # deferred: torch, only at inference
        from .network_input import network_input  # deferred: image handling

        prepared, shape = network_input(image, meta, model.config)
        device = choose_device(device)
        amp = bool(meta.get("inference_amp", True))
        layout = torch.channels_last if amp else torch.contiguous_format  # channels_last: 1.4x faster on CPUs
        model = model.to(device).eval().to(memory_format=layout)
        autocast = (lambda: inference_autocast(device, True)) if amp else None
        threads = inference_threads(torch.get_num_threads()) if device == "cpu" else torch.get_num_threads()

        def detect(tile: np.ndarray) -> Detections:
            x = torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1)))[None].to(device)
            x = x.contiguous(memory_format=layout)
            # an outer autocast (``predict --amp``) would round box coordinates: only ``autocast`` parts use it
            with cpu_threads(threads), torch.autocast("cuda" if device.startswith("cuda") else "cpu", enabled=False):
                d = model.detect(x, autocast=autocast)[0]
            return Detections(d["boxes"].float().cpu().numpy(), d["scores"].float().cpu().numpy(),
                              d["labels"].cpu().numpy().astype(np.int32),
                              d["masks"].float().cpu().numpy().astype(np.float16))  # bfloat16 under CPU autocast

        det = yield from detect_tiled(
            detect, prepared, tile_size=tile_size or int(meta.get("tile_size", 512)),
            overlap=int(meta.get("tile_overlap", 64)), cancel=cancel,
        )
        sy, sx = shape[0] / prepared.shape[0], shape[1] / prepared.shape[1]
        det.boxes = det.boxes * np.array([sx, sy, sx, sy], np.float32)
        extra = det.to_extra()
        return Maps(arrays={"score_map": np.clip(score_map(extra, shape), 0.0, 1.0)}, extra=extra)

    def package_network(self, meta: dict) -> PackageNetwork:
        """Detections rendered as one score map: bioimage.io tensors cannot describe lists of boxes and masks."""
        lite = str(meta.get("architecture", {}).get("backbone", "")).startswith("efficientnet")
        trunk = ("napari_instance_tuner.core.families.efficientnet_lite",
                 "napari_instance_tuner.core.families.maskrcnn.lite_backbone") if lite else ()
        return PackageNetwork(
            modules=(*trunk, "napari_instance_tuner.core.families.maskrcnn.maskplus",
                     "napari_instance_tuner.core.families.maskrcnn.sparse_roi_align",
                     "napari_instance_tuner.core.families.maskrcnn.model"),
            build="build_maskrcnn(architecture)", callable=self.package_callable, head="score_map",
            output_id="score_map", channels=("score_map",), in_channels=3, size_step=32, torchscript=False,
            notes="The package holds PyTorch state-dict weights and the architecture source (torch and torchvision); "
                  "no TorchScript, because the detector returns lists of boxes, scores and masks. Other tools "
                  "(bioimageio.core, and any consumer of `pytorch_state_dict` weights) get one **score map**: per "
                  "pixel, the largest mask probability x detection score over the detections. They cannot "
                  "separate touching or overlapping nuclei from it; napari-instance-tuner reads the package and "
                  "applies its score threshold, NMS, mask threshold and minimum size (`config.napari_instance_tuner`) "
                  "to the cached detections, giving the same instances as the original weights.",
        )

    def postprocess(self, maps: Maps, params: MaskRCNNParams) -> Instances:
        """See :func:`.postprocess.postprocess`."""
        prepare_torch_training()  # torchvision imports Triton: see llvm_guard (napari's OpenGL LLVM)
        return postprocess(maps, params)

    # --- training hooks ---

    def architecture(self, options: dict, in_channels: int) -> dict:
        """A complete :class:`~.model.MaskRCNNConfig` dict (raises ValueError on bad options).

        ``in_channels`` is not part of the architecture: the detector always sees 3 channels.
        """
        from .model import MaskRCNNConfig  # deferred: torch(vision)

        return MaskRCNNConfig.from_dict(options).to_dict()

    def train(self, train_samples, val_samples, meta, options, *, resume_path=None, cancel=None):
        """Train (see :func:`.train.train_maskrcnn`); ``options.family_options`` are
        :class:`.train.MaskRCNNTrainOptions` (MaskPlus biased training, initial weights)."""
        prepare_torch_training()  # torchvision imports Triton: see llvm_guard (napari's OpenGL LLVM)
        family_options = options.family_options.checked()
        meta.setdefault("training", {})["maskrcnn"] = family_options.to_dict()
        return (yield from train_maskrcnn(
            self, train_samples, val_samples, meta, options.train, options=family_options, crop=options.crop,
            batch_size=options.batch_size, augment=options.augment_config(), device=options.device,
            resume_path=resume_path, cancel=cancel,
        ))

    def training_step(self, model, batch, loss_fn=None):
        """torchvision's training-mode forward pass ``model(images, targets)``, which computes its own losses.

        ``batch`` is ``(x float32 (B, 3, c, c), TargetBatch, valid)`` (:mod:`.targets`); ``loss_fn`` weights
        and sums the loss dict (default :class:`.loss.DetectionLoss`: all weights 1).
        """
        images, targets, _ = batch
        return (loss_fn or self.default_loss())(model(images, targets.dicts))

    def default_loss(self):
        """The plain sum of torchvision's losses."""
        return DetectionLoss()

    def finetune_setup(self, model, meta, pairs, settings):
        """See :meth:`~...family.Family.finetune_setup`; ``settings.freeze_encoder`` freezes the backbone's
        body (the FPN, RPN and heads still train)."""
        prepare_torch_training()  # torchvision imports Triton: see llvm_guard (napari's OpenGL LLVM)
        return super().finetune_setup(model, meta, pairs, settings)

    def finetune_batches(self, model, meta, pairs, settings):
        """Crops of the corrected images with box/mask targets (see :func:`.train.finetune_batches`)."""
        return finetune_batches(model, meta, pairs, settings)

    def frozen_part(self, model):
        """The backbone's body."""
        return model.backbone.body

    def score(self, pred, reference) -> float:
        """The DSB2018 score (mean AP over IoU 0.5:0.05:0.95) of one prediction."""
        from ...evaluation.metrics import dsb_score  # deferred: scipy/scikit-image

        return dsb_score(pred, reference)
