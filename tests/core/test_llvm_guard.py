"""The guard that lets torch training run beside an OpenGL driver's LLVM (see core/training/llvm_guard.py)."""

from __future__ import annotations

import sys

from napari_instance_tuner.core.training import llvm_guard


def test_foreign_llvm_is_detected_from_the_memory_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1\n")
    assert llvm_guard.foreign_llvm_loaded(str(maps))
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n")
    assert not llvm_guard.foreign_llvm_loaded(str(maps))
    assert not llvm_guard.foreign_llvm_loaded(str(tmp_path / "missing"))


def test_nothing_is_done_without_a_foreign_llvm_or_with_triton_loaded(monkeypatch):
    monkeypatch.setattr(llvm_guard, "foreign_llvm_loaded", lambda *a: False)
    flags = sys.getdlopenflags()
    assert llvm_guard.prepare_torch_training() is False
    assert sys.getdlopenflags() == flags
    monkeypatch.setattr(llvm_guard, "foreign_llvm_loaded", lambda *a: True)
    monkeypatch.setitem(sys.modules, "triton", object())
    assert llvm_guard.prepare_torch_training() is False and sys.getdlopenflags() == flags
