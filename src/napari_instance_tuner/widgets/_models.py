"""Model picker: shipped weights by name (with their model card), the user's own weights (their user folder,
:mod:`..core.io.user_weights`) and any checkpoint file or bioimage.io package.

For each image the picker proposes the shipped model made the default for its kind (:meth:`ModelPicker.propose`,
the kind from :func:`..core.inference.image_kind.image_kind`) and says why, until the user picks a model.

Loading runs in a background job, so torch is imported only when a model is first needed and the
viewer never freezes on it. A file that cannot be loaded gives a notification and the picker returns
to the model loaded before.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, Label, PushButton

from ..core.io.checkpoint import default_model, file_card, load_model, model_card, shipped_models
from ..core.io.user_weights import user_models
from ._worker import Job, as_work, error_message, notify_error

WEIGHTS_FILTER = ("Model weights (*.safetensors *.pt *.pth *.ckpt *.zip rdf.yaml bioimageio.yaml);;"
                  "bioimage.io packages (*.zip rdf.yaml bioimageio.yaml);;All files (*)")
#: Characters per line of the model card's summary (two lines) in the dock.
SUMMARY_CHARS = 56


def card_text(card: dict) -> tuple[str, str]:
    """(one-line summary, multi-line tooltip) of a model card.

    Examples
    --------
    >>> card_text({"family": "three-branch", "trained_on": "GlaS train"})[0]
    'three-branch, trained on GlaS train'
    """
    summary = card.get("summary") or ", ".join(
        part for part in (card.get("family"), card.get("trained_on") and f"trained on {card['trained_on']}") if part
    )
    lines = []
    for key, value in card.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
        lines.append(f"{key.replace('_', ' ')}: {value}")
    return summary, "\n".join(lines)


class ModelPicker:
    """A combo box of models, a "Load weights…" button and the selected model's card.

    Parameters
    ----------
    on_loaded : callable
        Called with the :class:`~..core.io.checkpoint.LoadedModel` each time a model finishes loading.
    on_busy : callable
        Called with True when a load starts and False when it ends.
    sessions : Sessions, optional
        The viewer's registry: weights saved by the plugin (``weights_saved``) join the list at once.
    """

    def __init__(self, on_loaded: Callable[[Any], Any], on_busy: Callable[[bool], Any], sessions: Any = None) -> None:
        self.loaded = None  # the LoadedModel in use
        self.loaded_key: str | None = None  # its combo value: a shipped name or a file path
        self._on_loaded = on_loaded
        self._on_busy = on_busy
        self._job: Job | None = None
        self._files: list[str] = []
        self._silent = False
        self.user_chose = False  # True once the user picked a model: no proposal replaces it
        self.combo = ComboBox(label="model", choices=self._choices)
        self.combo.tooltip = "Shipped models by name, and weights files you loaded"
        self.combo.changed.connect(self._selected)
        self.browse = PushButton(text="Load weights…")
        self.browse.tooltip = ("Load a .safetensors checkpoint, a torchvision .pt/.pth file, or a bioimage.io model "
                               "package (.zip, or the rdf.yaml of an unpacked one)")
        self.browse.changed.connect(lambda *_: self._browse())
        self.card = Label(value="")
        self.reason = Label(value="")  # why this model is proposed for the image in hand (one line)
        choose = Container(widgets=[self.combo, self.browse], layout="horizontal", labels=True)
        choose.margins = (0, 0, 0, 0)
        self.widget = Container(widgets=[choose, self.card, self.reason], labels=False)
        self._show_card()
        if sessions is not None:
            sessions.weights_saved.connect(self.refresh)

    @property
    def selected(self) -> str | None:
        """The selected combo value (a shipped name or a file path), or None."""
        return self.combo.value

    @property
    def loading(self) -> bool:
        """True while a model loads in the background."""
        return self._job is not None and not self._job.done

    def family_name(self) -> str | None:
        """Family of the selected model, from its card or loaded metadata, before it is loaded."""
        if self.loaded is not None and self.loaded_key == self.selected:
            return self.loaded.meta.get("family")
        return model_card(self.selected).get("family") if self.selected in shipped_models() else None

    def default_params(self, family: Any) -> Any:
        """``family``'s post-processing parameters as stored with the selected model (else its defaults)."""
        loaded = self.loaded
        if loaded is not None and self.loaded_key == self.selected and loaded.family.name == family.name:
            return family.default_params(loaded.meta)
        card = model_card(self.selected) if self.selected in shipped_models() else {}
        return family.default_params({"postprocess": card.get("postprocess", {})})

    def load(self, key: str, chosen: bool = True) -> Job:
        """Load the model ``key`` (a shipped name or a path) in the background.

        ``chosen``: the user asked for this model (browsed or picked it): no proposal replaces it any more.
        Run loading the proposed model passes False.
        """
        if chosen:
            self.user_chose = True
            self.reason.value = "your choice"

        if key not in self._keys():
            self._files.append(key)
        self._set_choice(key)
        self._on_busy(True)

        def loaded(model: Any) -> None:
            self.loaded, self.loaded_key = model, key
            self._show_card()
            self._on_loaded(model)

        def failed(exc: BaseException) -> None:
            notify_error(f"could not load model {Path(key).name!r}: {error_message(exc)}")
            if key in self._files:
                self._files.remove(key)
            self._set_choice(self.loaded_key)

        self._job = Job(
            as_work(lambda: load_model(key)),
            on_result=loaded,
            on_error=failed,
            on_finished=lambda: self._on_busy(False),
        ).start()
        return self._job

    def refresh(self, *_: Any) -> None:
        """Re-read the list (e.g. after weights were saved to the user's folder); the selection stays."""
        self._set_choice(self.selected)

    def _choices(self, *_: Any) -> list[tuple[str, str]]:
        shipped = [(name, name) for name in shipped_models()]
        mine = [(f"{name} (yours)", str(path)) for name, path in user_models().items()]
        known = {value for _, value in mine}
        return shipped + mine + [(f"{Path(p).name} (file)", p) for p in self._files if p not in known]

    def _keys(self) -> list[str]:
        return [value for _, value in self._choices()]

    def _set_choice(self, key: str | None) -> None:
        self._silent = True
        try:
            self.combo.reset_choices()
            if key is not None and key in self._keys():
                self.combo.value = key
        finally:
            self._silent = False
        self._show_card()

    def propose(self, kind: str, reason: str) -> None:
        """Select the shipped model made the default for images of ``kind`` (``default_for`` in its card; see
        :func:`~..core.io.checkpoint.default_model`), unless the user chose one; ``reason`` says why."""
        name = default_model(kind)
        if name is None:
            self.reason.value = f"{reason}: no shipped model is the default for it"
        elif self.user_chose or self.loading:
            kept = "your choice" if self.user_chose else "the model loading"
            self.reason.value = f"{reason}: {name} suits it; kept {kept}" if name != self.selected else \
                f"proposed: {reason}"
        else:
            if name != self.selected:
                self._set_choice(name)
            self.reason.value = f"proposed: {reason}"

    def _selected(self, key: str | None) -> None:
        self._show_card()
        if not self._silent and key is not None:
            self.user_chose = True
            self.reason.value = "your choice"
        if not self._silent and key is not None and key != self.loaded_key:
            self.load(key)

    def _browse(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self.widget.native, "Load model weights", "", WEIGHTS_FILTER)
        if path:
            self.load(path)

    def _show_card(self) -> None:
        key = self.selected
        if key is None:
            summary, tooltip = "no model: use “Load weights…”", ""
        elif key in shipped_models():
            summary, tooltip = card_text(model_card(key))
        elif self.loaded is not None and self.loaded_key == key:
            summary, tooltip = card_text(file_card(self.loaded.meta, key))
        else:
            summary, tooltip = "loading…", key
        # Two lines broken here (a word-wrapped label sizes badly in a dock); the tooltip holds the whole card.
        self.card.value = "\n".join(textwrap.wrap(summary, SUMMARY_CHARS, max_lines=2, placeholder=" …"))
        self.card.tooltip = tooltip or summary
        self.combo.tooltip = tooltip or "Shipped models by name, and weights files you loaded"
