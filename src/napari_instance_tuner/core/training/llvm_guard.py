"""Let torch training run in a process whose OpenGL driver already loaded LLVM (napari on Mesa).

Creating a torch optimiser imports ``torch._dynamo``, which imports Triton when it is installed (it is
with CUDA builds of torch); so does importing ``torchvision.ops`` (the Mask R-CNN family). Triton's extension bundles its own LLVM; in a process where Mesa's OpenGL
driver (llvmpipe, radeonsi, gallium) has already mapped the system ``libLLVM``, that import crashes the
whole process with a segmentation fault: the two LLVMs' symbols collide. napari's canvas creates such
an OpenGL context, so fine-tuning inside napari crashed where the same code ran fine on the command line.

:func:`prepare_torch_training` imports Triton's extension with ``RTLD_DEEPBIND`` first, which makes it
resolve its own LLVM symbols; later imports reuse the loaded module. It does nothing off Linux, when
Triton is absent or already imported, or when no other LLVM is mapped.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading

_LOCK = threading.Lock()


def foreign_llvm_loaded(maps_path: str = "/proc/self/maps") -> bool:
    """True if a shared library named like ``libLLVM`` is mapped into this process (Linux only)."""
    try:
        with open(maps_path) as fh:
            return any("libLLVM" in line for line in fh)
    except OSError:
        return False


def prepare_torch_training() -> bool:
    """Pre-import Triton safely when a foreign LLVM is loaded; True if it did so.

    Call it before building an optimiser or importing torchvision (e.g. at the start of a worker). Safe
    and cheap to call often: after the first import of Triton it returns at once.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "RTLD_DEEPBIND"):
        return False
    with _LOCK:
        if "triton" in sys.modules or importlib.util.find_spec("triton") is None or not foreign_llvm_loaded():
            return False
        flags = sys.getdlopenflags()
        sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
        try:
            import triton._C.libtriton  # noqa: F401 - loaded once, with its own LLVM bound first
        except ImportError:
            return False
        finally:
            sys.setdlopenflags(flags)
        return True
