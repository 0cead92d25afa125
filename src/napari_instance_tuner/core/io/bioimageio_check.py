"""Check a bioimage.io package with the bioimage.io libraries (the ``bioimageio`` extra).

:func:`check_package` validates the description with ``bioimageio.spec`` (format, files, test tensors'
shapes) and, where ``bioimageio.core`` is installed, runs the packaged weights on the test input and compares
with the test output (``bioimageio.core.test_model``), as the bioimage.io collection's CI does.
"""

from __future__ import annotations

import gc
import inspect
import re
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InstanceTunerError

_PATCHED = False


def _patch_pydantic_wrap_handlers() -> None:
    """Make bioimageio.spec 0.5.12 work with pydantic >= 2.14.

    Some of bioimageio.spec's wrap serializers call ``handler(value, info)``, passing the serialization info as
    pydantic's ``index_key``; pydantic 2.14 rejects that with a TypeError (pydantic PR 13506), so every model
    with weights fails to validate. This drops the stray argument from those functions (their code objects are
    replaced in place, since pydantic holds references to the functions); a fixed bioimageio.spec has no
    such call and is left alone.
    """
    global _PATCHED
    if _PATCHED:
        return
    from bioimageio.spec._internal import io_packaging, validated_string_with_inner_node
    from bioimageio.spec.model import v0_4

    inner = validated_string_with_inner_node.ValidatedStringWithInnerNode
    targets = [io_packaging.package_file_descr_serializer, v0_4.package_weights,
               inner.__dict__["_serialize"].wrapped]  # the function under pydantic's decorator proxy
    stray = re.compile(r"handler\(\s*(\w+),\s*info,?[^\n]*\n?\s*\)")
    for func in targets:
        source = textwrap.dedent(inspect.getsource(func))
        fixed = stray.sub(r"handler(\1)", source)
        if fixed == source:
            continue
        fixed = re.sub(r"^@.*\n", "", fixed, flags=re.MULTILINE)  # the decorator is already applied to ``func``
        namespace: dict = {}
        exec(compile(fixed, inspect.getsourcefile(func), "exec"), func.__globals__, namespace)  # noqa: S102
        func.__code__ = namespace[func.__name__].__code__
    _PATCHED = True


@dataclass
class CheckReport:
    """Outcome of :func:`check_package`.

    Attributes
    ----------
    format_status : str
        ``bioimageio.spec``'s status: ``"passed"``, ``"valid-format"`` or ``"failed"``.
    errors, warnings : list of str
        ``"location: message"`` lines of the format validation.
    test_status : str or None
        ``bioimageio.core.test_model``'s status (``"passed"`` or ``"failed"``); None where not run.
    test_errors : list of str
        Its errors.
    test_note : str
        Why the test tensors were not reproduced, where they were not.
    """

    format_status: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    test_status: str | None = None
    test_errors: list[str] = field(default_factory=list)
    test_note: str = "not requested"

    @property
    def ok(self) -> bool:
        """No format errors, and the test tensors reproduced where that was tested."""
        return not self.errors and self.format_status != "failed" and self.test_status in (None, "passed")

    def summary(self) -> str:
        """A few lines for logs and the CLI."""
        lines = [f"bioimageio.spec: {self.format_status}, {len(self.errors)} errors, {len(self.warnings)} warnings"]
        lines += [f"  error: {e}" for e in self.errors] + [f"  warning: {w}" for w in self.warnings]
        if self.test_status is None:
            lines.append(f"bioimageio.core: test tensors not reproduced ({self.test_note})")
        else:
            lines.append(f"bioimageio.core test_model (test tensors reproduced): {self.test_status}")
            lines += [f"  error: {e}" for e in self.test_errors]
        return "\n".join(lines)


def _entries(entries) -> list[str]:
    return [f"{'.'.join(str(p) for p in e.loc) or 'rdf'}: {e.msg}" for e in entries]


def check_package(path: str | Path, reproduce: bool = True) -> CheckReport:
    """Validate a package (folder, its ``rdf.yaml``, or a ``.zip``) with the bioimage.io libraries.

    Parameters
    ----------
    path : path-like
    reproduce : bool
        Also run ``bioimageio.core.test_model`` (all weight formats) when bioimageio.core is installed.

    Raises
    ------
    InstanceTunerError
        If ``bioimageio.spec`` is not installed (``pip install 'napari-instance-tuner[bioimageio]'``).
    """
    try:
        from bioimageio.spec import load_description
    except ImportError:
        raise InstanceTunerError(
            "checking a bioimage.io package needs bioimageio.spec: pip install 'napari-instance-tuner[bioimageio]'"
        ) from None
    _patch_pydantic_wrap_handlers()
    source = Path(path)
    if source.is_dir():
        source = source / "rdf.yaml"
    with warnings.catch_warnings():
        # bioimageio.spec and .core leave the package's files open; close them quietly below.
        warnings.simplefilter("ignore", ResourceWarning)
        # TorchScript is deprecated in PyTorch, but it is the format bioimage.io consumers run.
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        summary = load_description(source).validation_summary
        report = CheckReport(summary.status, _entries(summary.errors), _entries(summary.warnings))
        if reproduce:
            try:
                from bioimageio.core import test_model
            except ImportError:
                test_model = None
                report.test_note = "bioimageio.core is not installed"
            if test_model is not None:
                tested = test_model(source)
                report.test_status = tested.status
                report.test_errors = _entries(tested.errors)
        del summary
        gc.collect()
    return report
