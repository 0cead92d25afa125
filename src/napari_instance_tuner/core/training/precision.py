"""Mixed precision where it pays: bfloat16 only on devices that compute in it natively."""

from __future__ import annotations

import dataclasses
from typing import Any

from .loop import bfloat16_supported


def with_amp_where_native(family: Any, settings: Any, device: str) -> Any:
    """``settings`` (a frozen dataclass with ``amp``) with ``amp`` kept only where it is fast: the family trains
    in bfloat16 and ``device`` has native bfloat16 (:func:`.loop.bfloat16_supported`: AVX512-BF16 or AMX on a
    CPU, a recent GPU); else the same settings with ``amp=False`` (float32).

    The Fine-tune widget asks for mixed precision by default and lets this decide; on the command line
    ``--amp`` asks for it explicitly and is refused where it would be slow. Imports torch.
    """
    if not settings.amp or (family.supports_amp and bfloat16_supported(device)):
        return settings
    return dataclasses.replace(settings, amp=False)
