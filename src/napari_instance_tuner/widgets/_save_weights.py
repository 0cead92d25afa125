"""“Save fine-tuned weights…”: ask for a file, refuse loaded checkpoints, confirm overwrites, write in a job.

The checkpoint is written by :func:`..core.training.finetune.save_finetuned` (which records the parent's sha256,
the data, the settings and the loss history) in a background job. The dialog proposes the user's weights
folder (:func:`..core.io.user_weights.user_weights_dir`), whose checkpoints every model picker lists; the
plugin's installed weights folder is refused (an update would replace it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog, QWidget

from ..core.io.checkpoint import WEIGHTS_DIR
from ..core.io.user_weights import user_weights_dir
from ..core.training.finetune import save_finetuned
from ._worker import FileWriter, notify_error


@dataclass
class Tuned:
    """A fine-tuned model and what :func:`..core.training.finetune.save_finetuned` records about it.

    Attributes
    ----------
    parent : LoadedModel
        The model it was tuned from.
    model : torch.nn.Module
        The tuned copy (on the CPU).
    result : TrainResult
        Loss history and how training stopped.
    pairs : list of CorrectedImage
    settings : FinetuneSettings
    scratch : Path or None
        The scratch checkpoint the Segment widget loaded to re-segment, if any.
    """

    parent: Any
    model: Any
    result: Any
    pairs: list
    settings: Any
    scratch: Path | None = None


def ask_save_path(parent: QWidget, suggested: str) -> str | None:
    """Ask for a checkpoint file name with a dialog (overwrites are confirmed separately)."""
    path, _ = QFileDialog.getSaveFileName(
        parent, "Save fine-tuned weights", suggested, "Model weights (*.safetensors)",
        options=QFileDialog.Option.DontConfirmOverwrite,
    )
    return path or None


def _same_file(a: Any, b: Any) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


class WeightsSaver(FileWriter):
    """Saves a :class:`Tuned` model where the user says, never over a loaded checkpoint.

    Parameters
    ----------
    ask_path : callable
        ``ask_path(suggested) -> str | None``: the file dialog.
    confirm_overwrite : callable
        ``confirm_overwrite(path) -> bool``, asked before an existing (not loaded) file is replaced.
    on_saved, on_declined : callable
        Called with the path written / the existing file kept.
    on_finished : callable
        Called when a save job ends, whatever the outcome.
    """

    failure = "could not save the fine-tuned weights"

    def __init__(
        self,
        ask_path: Callable[[str], str | None],
        confirm_overwrite: Callable[[Path], bool],
        on_saved: Callable[[Path], Any],
        on_declined: Callable[[Path], Any],
        on_finished: Callable[[], Any],
    ) -> None:
        super().__init__(on_saved, on_finished)
        self.ask_path, self.confirm_overwrite, self._on_declined = ask_path, confirm_overwrite, on_declined

    def save(self, tuned: Tuned, loaded_paths: Iterable[Any]) -> bool:
        """Ask for a path and start writing; False if nothing was started.

        ``loaded_paths`` are checkpoints in use (the parent, the Segment widget's model, ...): refused.
        """
        if self.job is not None:
            return False
        suggested = user_weights_dir(create=True) / f"{tuned.parent.name}-finetuned.safetensors"
        answer = self.ask_path(str(suggested))
        if not answer:
            return False
        path = Path(answer) if Path(answer).suffix else Path(answer).with_suffix(".safetensors")
        if path.resolve().parent == WEIGHTS_DIR:
            notify_error(f"refusing to save into the plugin's installed weights folder (an update replaces it); "
                         f"choose another folder, e.g. {user_weights_dir()}")
            return False
        for loaded in loaded_paths:
            if _same_file(path, loaded):
                notify_error(f"refusing to overwrite the loaded weights {Path(loaded).name!r}; choose a new file name")
                return False
        if path.exists() and not self.confirm_overwrite(path):
            self._on_declined(path)
            return False

        def write() -> Path:
            return save_finetuned(path, tuned.parent, tuned.model, tuned.result, tuned.pairs, tuned.settings)

        return self._start(write)
