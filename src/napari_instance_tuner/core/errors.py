"""Error types the plugin raises for bad input. Each message names the problem and, where known, the file."""


class InstanceTunerError(ValueError):
    """Base class of every error this package raises on purpose (a user-facing message)."""


class InputImageError(InstanceTunerError):
    """The image cannot be segmented (wrong dtype, shape, channels, NaN, empty)."""


class WeightsError(InstanceTunerError):
    """A weights file is missing, corrupt, foreign, unsafe or of an unsupported version."""


class ParamsError(InstanceTunerError):
    """Post-processing or training parameters are unknown or out of range."""


class Cancelled(Exception):
    """Raised inside long work when the user cancelled it; state stays as before the step."""
