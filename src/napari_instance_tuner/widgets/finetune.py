"""The Fine-tune dock widget: teach the current model the user's corrections, in the background.

The model is the Segment widget's current one (published in the viewer's registry, :mod:`._sessions`), else
one loaded here by name or file. Fine-tune runs one core generator (:func:`..core.training.finetune.finetune`, which trains a *copy*) in a
thread worker: a progress bar and a live loss curve follow it, and Cancel stops after the current step,
keeping the weights of the last finished step. A pair with a held-out region (a Shapes layer) is scored
there every "validate every" steps with the post-processing parameters of the image in hand: the score is
the plot's second curve, the status line tells the best one, and the best-scoring weights are kept.
A finished run is written to a scratch checkpoint (with
its parent's hash, see :func:`..core.training.finetune.save_finetuned`), which is proposed through the registry: the
Segment widget loads it to re-segment its image; the previous Labels layer is kept as "<name> (before fine-tune)". "Save
fine-tuned weights…" writes the checkpoint where the user chooses, never over a loaded file; "Export
bioimage.io package…" writes the fine-tuned model (else the current one) as a bioimage.io model package.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, Container, FloatSpinBox, Label, ProgressBar, PushButton, SpinBox
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QWidget

from ..core.inference.predict import choose_device
from ..core.progress import CancelToken
from ..core.training.finetune import FinetuneSettings, finetune, save_finetuned
from ..core.training.precision import with_amp_where_native
from ._base import DockWidget, error_message, notify_error
from ._models import ModelPicker
from ._package_export import PackageExporter, ask_package_path
from ._pairs import PairList
from ._plot import LossPlot
from ._progress import time_left
from ._save_weights import Tuned, WeightsSaver, ask_save_path
from ._scratch import CloseWatch, Scratch, ask_keep_weights
from .export import ask_overwrite

BEFORE = "before fine-tune"


class FinetuneWidget(DockWidget):
    """Fine-tune a model on (image, corrected labels) pairs, optionally inside checked regions.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    ask_path : callable, optional
        ``ask_path(suggested) -> str | None``, the save dialog (tests pass their own).
    ask_package : callable, optional
        The same for "Export bioimage.io package…" (a ``.zip``).
    confirm_overwrite : callable, optional
        ``confirm_overwrite(path) -> bool``, asked before an existing (not loaded) file is replaced.
    ask_keep : callable, optional
        ``ask_keep(name) -> bool``, asked when the widget goes while fine-tuned weights are unsaved.
    """

    #: Emitted when training ends: "ok", "cancelled" or "error".
    finetune_finished = Signal(str)
    #: Emitted with the path after "Save fine-tuned weights…" wrote a checkpoint.
    saved = Signal(str)
    #: Emitted with the path after "Export bioimage.io package…" wrote a package.
    exported = Signal(str)

    def __init__(
        self,
        napari_viewer: Any,
        parent: QWidget | None = None,
        ask_path: Callable[[str], str | None] | None = None,
        confirm_overwrite: Callable[[Path], bool] | None = None,
        ask_package: Callable[[str], str | None] | None = None,
        ask_keep: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(napari_viewer, parent)
        self.saver = WeightsSaver(
            ask_path or partial(ask_save_path, self),
            confirm_overwrite or (lambda path: ask_overwrite(self, [Path(path)])),
            on_saved=self._saved,
            on_declined=lambda path: setattr(self.status, "value", f"kept the existing {path.name}"),
            on_finished=self._update,
        )
        self.exporter = PackageExporter(ask_package or partial(ask_package_path, self), on_exported=self._exported,
                                        on_finished=self._update)
        self.tuned: Tuned | None = None
        self._saving: Tuned | None = None  # what the running save writes
        self._pending = False
        self._stop = None
        # Removed with the widget (dock or viewer closed), after offering to save unsaved weights.
        self.scratch = Scratch(ask_keep or ask_keep_weights, self.saver.ask_path)
        self._close_watch = CloseWatch(self, self.scratch.close)
        self.destroyed.connect(self.scratch.release)
        self._outcome = "error"
        self._running = ""

        self.pairs = PairList(napari_viewer)
        self.model_info = Label(value="")
        self.fallback = ModelPicker(on_loaded=self._fallback_loaded, on_busy=self._fallback_busy,
                                    sessions=self.sessions)
        self.fallback.combo.label = "or model"
        defaults = FinetuneSettings()
        self.budget = SpinBox(label="time budget (s)", min=0, max=86_400, value=60)
        self.budget.tooltip = "Stop after this many seconds of training (0: run all the steps)"
        self.steps = SpinBox(label="at most steps", min=1, max=100_000, value=1000)
        self.lr = FloatSpinBox(label="learning rate", min=1e-6, max=1.0, step=1e-5, value=defaults.lr)
        self.batch_size = SpinBox(label="batch size", min=1, max=64, value=defaults.batch_size)
        self.validate_every = SpinBox(label="validate every", min=1, max=100_000, value=defaults.validate_every)
        self.validate_every.tooltip = (
            "With a held-out region: score it every this many steps (the best-scoring weights are kept)"
        )
        self.augment = CheckBox(text="augmentation", value=defaults.augment)
        self.augment.tooltip = "Random flips, 90° rotations, rescaling, colour, blur and noise on the training crops"
        self.freeze_encoder = CheckBox(text="freeze the encoder", value=defaults.freeze_encoder)
        self.amp = CheckBox(text="mixed precision (bfloat16) where the device has it", value=True)
        self.amp.tooltip = ("bfloat16 forward passes: 2-3x faster on CPUs with AVX512-BF16 or AMX and on recent GPUs; "
                            "float32 where the device lacks native bfloat16")
        self.resegment = CheckBox(text="re-segment the Segment widget's image when done", value=True)
        self.start_button = PushButton(text="Fine-tune")
        self.start_button.changed.connect(lambda *_: self.start())
        self.cancel_button = PushButton(text="Cancel")
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        self.progress = ProgressBar(min=0, max=1, value=0)
        self.plot = LossPlot()
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.save_button = PushButton(text="Save fine-tuned weights…")
        self.save_button.changed.connect(lambda *_: self.save())
        self.export_button = PushButton(text="Export bioimage.io package…")
        self.export_button.tooltip = ("Write the fine-tuned model (else the current one) as a bioimage.io model "
                                      "package (.zip), its test tensors cut from the Segment widget's image")
        self.export_button.changed.connect(lambda *_: self.export_package())

        settings = Container(widgets=[self.budget, self.steps, self.lr, self.batch_size, self.validate_every], labels=True)
        buttons = Container(widgets=[self.start_button, self.cancel_button], layout="horizontal", labels=False)
        self.stack(self.pairs.widget, self.model_info, self.fallback.widget, settings, self.augment,
                   self.freeze_encoder, self.amp, self.resegment, buttons, self.progress, self.plot, self.status,
                   self.save_button, self.export_button)
        self.watch_layers(self._layers_changed, emitters=("inserted",))
        self.watch_layers(self._layer_removed, emitters=("removed",))
        self._update()

    # -- public actions -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a model loads here, training runs or weights are being saved."""
        return (self._pending or self._job is not None or self.saver.job is not None or self.exporter.job is not None
                or self.fallback.loading)

    def model(self) -> Any:
        """The model that Fine-tune would start from: the Segment widget's, else the one loaded here."""
        return self.sessions.model or self.fallback.loaded

    def settings(self) -> FinetuneSettings:
        """The settings shown."""
        return FinetuneSettings(steps=int(self.steps.value), lr=float(self.lr.value),
                                batch_size=int(self.batch_size.value), augment=bool(self.augment.value),
                                freeze_encoder=bool(self.freeze_encoder.value),
                                validate_every=int(self.validate_every.value), amp=bool(self.amp.value),
                                seconds=float(self.budget.value) or None)

    def start(self) -> None:
        """Fine-tune on the listed pairs in a worker; problems become notifications."""
        if self._pending or self._job is not None:
            return
        if not self.pairs.pairs:
            notify_error("no pairs to fine-tune on: choose an image and its corrected Labels layer, then “Add pair”")
            return
        if self.sessions.model is None and (self.fallback.loading or self.fallback.loaded is None):
            if not self.fallback.loading:
                if self.fallback.selected is None:
                    notify_error("no model: load one in the Segment widget, or choose one here")
                    return
                self.fallback.load(self.fallback.selected)
            self._pending = True  # _fallback_loaded starts the training
            self._update()
            return
        self._start_training()

    def cancel(self) -> None:
        """Stop after the current training step, keeping the weights of the last finished one."""
        if self._stop is not None:
            self._stop.cancel()
        self._pending = False
        self._update()

    def save(self) -> None:
        """Write the fine-tuned weights to a file the user chooses (never over a loaded checkpoint)."""
        if self.tuned is None:
            notify_error("nothing to save yet: fine-tune a model first")
            return
        current = self.sessions.model
        loaded = (self.tuned.parent.path, None if current is None else current.path, self.tuned.scratch)
        if self.saver.save(self.tuned, loaded):
            self._saving = self.tuned
            self._update()

    def export_package(self) -> None:
        """Write the fine-tuned model, else the current one, as a bioimage.io package (a .zip the user names)."""
        model = self.tuned or self.model()
        layer = self.sessions.current or (self.pairs.pairs[0].image if self.pairs.pairs else None)
        if model is None:
            notify_error("no model to export: load one in the Segment widget, or choose one here")
        elif layer is None:
            notify_error("no image to cut the package's test tensors from: open one in the Segment widget")
        elif self.exporter.export(model, layer.data[0] if layer.multiscale else layer.data, layer.name):
            what = getattr(model, "name", "the fine-tuned model")
            self.status.value = f"exporting a bioimage.io package of {what}…"
            self._update()

    # -- training -------------------------------------------------------------------------------

    def _start_training(self) -> None:
        self._pending = False
        loaded, settings = self.model(), self.settings()
        data = [pair.capture() for pair in self.pairs.pairs]
        device = self.sessions.device
        scratch = self.scratch.file(f"{loaded.name}-finetuned") if self.resegment.value else None
        params = self._segment_params(loaded)
        stop = self._stop = CancelToken()

        def work(_token):
            pairs = [d.corrected() for d in data]
            chosen = choose_device(device)
            run_settings = with_amp_where_native(loaded.family, settings, chosen)
            model, result = yield from finetune(loaded, pairs, run_settings, device=chosen, cancel=stop,
                                                params=params)
            path = None
            if scratch is not None and result.history and result.stopped != "cancelled":
                path = save_finetuned(scratch, loaded, model, result, pairs, run_settings)
            return Tuned(loaded, model, result, pairs, run_settings, path)

        self.plot.clear()
        self.progress.max, self.progress.value = 1000, 0
        self._running = self.status.value = f"fine-tuning {loaded.name}…"
        self._outcome = "error"
        # No napari activity bar (DockWidget.start_job opens none): its animated indicator repaints the
        # window for as long as the job runs, about half the CPU from training on a software-OpenGL canvas.
        self.start_job(work, on_result=self._trained, on_error=self._failed, on_finished=self._training_done,
                       on_yielded=self._show_step, progress=f"Fine-tuning {loaded.name}")
        self._update()

    def _segment_params(self, loaded: Any) -> Any:
        """The post-processing parameters of the image in hand when its session holds ``loaded``'s family and
        the Segment widget holds ``loaded``, else None (the model's defaults)."""
        session = self.sessions.current_session()
        if self.sessions.model is not loaded or session is None or session.model is None:
            return None
        return session.params if session.family.name == loaded.family.name else None

    def _show_step(self, item: Any) -> None:
        info = getattr(item, "info", {})
        if "epoch" in info:  # one record per finished step (steps_per_epoch = 1); step 0: the start
            if "loss" in info:
                self.plot.add(info["loss"])
                self._show_time(info)
            if "val_score" in info:
                self.plot.add_score(info["epoch"], info["val_score"])
                self.status.value = f"{self._running}; {self._validation_text()}"

    def _show_time(self, record: dict) -> None:
        """Bar and status by whichever ends sooner, the time budget or the steps: "step N, about T s left"."""
        steps, elapsed = int(record["epoch"]), float(record.get("time", 0.0))
        done = steps / int(self.steps.value)
        if self.budget.value:
            done = max(done, elapsed / float(self.budget.value))
        self.progress.max, self.progress.value = 1000, min(round(1000 * done), 1000)
        left = time_left(min(done, 1.0), 1.0, elapsed)
        self.status.value = f"{self._running} step {steps}, " + (
            "time left unknown" if left is None else f"about {left:.0f} s left")

    def _validation_text(self) -> str:
        """"held-out score: start S, best B at step N" from the plotted scores."""
        start = next((v for s, v in self.plot.scores if s == 0), None)
        best = self.plot.best_score()
        parts = [] if start is None else [f"start {start:.3f}"]
        if best is not None:
            parts.append(f"best {best[1]:.3f} at step {best[0]}")
        return "held-out score: " + ", ".join(parts)

    def _trained(self, tuned: Tuned) -> None:
        history = tuned.result.history
        cancelled = tuned.result.stopped == "cancelled"
        self._outcome = "cancelled" if cancelled else "ok"
        if not history:
            self.status.value = "cancelled before the first step finished: nothing to keep"
            return
        validation = getattr(tuned.result, "validation", None)
        losses = f"loss {history[0]['loss']:.4f} → {history[-1]['loss']:.4f}"
        if validation is not None and not validation["best_step"]:
            # fit keeps the best-validated weights: with no validation done, those are the starting ones.
            self.status.value = (f"stopped after {len(history)} steps ({losses}) before a validation finished: "
                                 "the starting weights are kept, nothing to save")
            return
        self.tuned = self.scratch.unsaved = tuned
        held = "" if validation is None else (
            f"; held-out score {validation['start_score']:.3f} → best {validation['best_score']:.3f} at step "
            f"{validation['best_step']}, whose weights are kept"
        )
        if cancelled:
            kept = "the best-scoring weights are kept" if validation else "their weights are kept"
            self.status.value = (f"cancelled after {len(history)} steps ({losses}{held}); {kept}: "
                                 "“Save fine-tuned weights…” writes them")
            return
        stopped = " (early stopping)" if tuned.result.stopped == "early stopping" else ""
        precision = "bfloat16" if tuned.settings.amp else "float32"
        self.status.value = (f"fine-tuned {tuned.parent.name} for {len(history)} steps{stopped} in {precision} "
                             f"({losses}{held})")
        if tuned.scratch is not None:
            self._resegment(tuned.scratch)

    def _resegment(self, path: Path) -> None:
        image = self.sessions.current
        if image is None:
            self.status.value += "; open the Segment widget and load the saved weights to segment with them"
            return
        if self.sessions.running:
            self.status.value += f"; the Segment widget is busy: load {path} there to segment with it"
            return
        self.sessions.weights_proposed.emit(image, str(path), BEFORE)  # the Segment widget keeps, loads, runs
        self.status.value += f"; re-segmenting {image.name}"

    def _failed(self, exc: BaseException) -> None:
        self.status.value = "fine-tuning failed"
        notify_error(f"fine-tuning failed: {error_message(exc)}")

    def _training_done(self) -> None:
        self._stop = None
        self._update()
        self.finetune_finished.emit(self._outcome)

    # -- saving, models and layers ----------------------------------------------------------------

    def _saved(self, path: Path) -> None:
        if self.scratch.unsaved is self._saving:
            self.scratch.unsaved = None  # saved: nothing to ask about when the widget closes
        self.status.value = f"saved {Path(path).name} (parent {self.tuned.parent.name}, sha256 recorded)"
        self.saved.emit(str(path))
        self.sessions.weights_saved.emit(str(path))  # the model pickers list it at once

    def _exported(self, path: Path) -> None:
        self.status.value = f"wrote the bioimage.io package {Path(path).name}"
        self.exported.emit(str(path))

    def _fallback_loaded(self, loaded: Any) -> None:
        if self._pending:
            self._start_training()
        self._update()

    def _fallback_busy(self, busy: bool) -> None:
        if not busy and self._pending:
            self._pending = False  # the model did not load; its error is already shown
        self._update()

    def _layers_changed(self, *_: Any) -> None:
        self.pairs.refresh()
        self._update()

    def _layer_removed(self, event: Any) -> None:
        self.pairs.forget(event.value)
        self._update()

    def _update(self) -> None:
        running = self._pending or self._job is not None
        self.start_button.enabled = not running
        self.cancel_button.enabled = running
        self.save_button.enabled = self.tuned is not None and self.saver.job is None
        self.export_button.enabled = self.exporter.job is None and not running
        self.pairs.add_button.enabled = self.pairs.remove_button.enabled = not running
        linked = self.sessions.model
        self.fallback.widget.visible = linked is None  # the picker is only the fallback
        self.model_info.value = (
            f"model: {linked.name} (the Segment widget's)" if linked is not None
            else "model: none in a Segment widget; choose one here"
        )

