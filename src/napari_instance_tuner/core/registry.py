"""Family name -> implementation. Unknown names raise an error listing the valid ones."""

from __future__ import annotations

import importlib

from .errors import InstanceTunerError
from .family import Family

# name -> "module:Class"; modules are imported on first use so that torch stays unimported.
_FAMILIES: dict[str, str] = {
    "layering": "napari_instance_tuner.core.families.layering.family:LayeringFamily",
    "maskrcnn": "napari_instance_tuner.core.families.maskrcnn.family:MaskRCNNFamily",
    "three-branch": "napari_instance_tuner.core.families.three_branch.family:ThreeBranchFamily",
}


#: The family a new model is of unless told otherwise (``train --family``).
DEFAULT_FAMILY = "three-branch"
#: The default family's :attr:`~.family.Family.example_model`, here so that the command line's help names it
#: without importing the family's modules (0.4 s); a test checks the two agree.
EXAMPLE_MODEL = "three-branch-glas"


def family_names() -> list[str]:
    """Names of all registered families."""
    return sorted(_FAMILIES)


def get_family(name: str) -> Family:
    """Return an instance of the family called ``name``.

    Raises
    ------
    InstanceTunerError
        If no family of that name exists; the message lists the valid names.
    """
    if name not in _FAMILIES:
        raise InstanceTunerError(f"unknown model family {name!r}; valid families: {', '.join(family_names())}")
    module_name, class_name = _FAMILIES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()


def example_model() -> str:
    """The shipped model that examples name: the default family's :attr:`~.family.Family.example_model`
    (:data:`EXAMPLE_MODEL`, read without importing the family)."""
    return EXAMPLE_MODEL
