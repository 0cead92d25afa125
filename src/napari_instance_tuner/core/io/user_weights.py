"""Where the user's own weights live: a per-user data folder, never inside the installed package.

Fine-tuned weights are proposed there (the Fine-tune widget's "Save fine-tuned weights…"), and every
``*.safetensors`` file in it is listed beside the shipped models in the model pickers. The folder is
platformdirs' user data folder of the plugin (``~/.local/share/napari-instance-tuner/weights`` on Linux,
``~/Library/Application Support/...`` on macOS, ``%LOCALAPPDATA%\\...`` on Windows); the environment
variable :data:`ENV` moves it (tests, shared installations).
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming another folder for the user's weights.
ENV = "NAPARI_INSTANCE_TUNER_WEIGHTS"
APP = "napari-instance-tuner"


def user_weights_dir(create: bool = False) -> Path:
    """The user's weights folder (made when ``create``)."""
    if os.environ.get(ENV):
        folder = Path(os.environ[ENV]).expanduser()
    else:
        import platformdirs

        folder = platformdirs.user_data_path(APP, appauthor=False) / "weights"
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def user_models() -> dict[str, Path]:
    """File stem -> path of the checkpoints (``*.safetensors``) in the user's weights folder, by name."""
    folder = user_weights_dir()
    return {p.stem: p for p in sorted(folder.glob("*.safetensors"))} if folder.is_dir() else {}
