"""CPU inference speed: thread count on a busy machine, batch norm folded into convolutions, warm-up.

- :func:`choose_threads` / :func:`inference_threads`: torch's default uses every core; when another
  process keeps a core busy, each parallel convolution waits for the thread that shares its core, and a
  call varies 1-7 s where one thread gives a steady 1.4 s (``benchmarks/busy_threads.py``). The policy takes
  the cores that are not busy right now (runnable tasks of other processes, from ``/proc/loadavg``).
- :func:`fold_batchnorm` / :func:`inference_copy`: an eval-mode copy of a network whose batch norms are
  folded into the preceding convolutions (exact to float32 rounding), cached on the network until its
  weights change;
- :class:`AutocastFloat32`: one part of a network under mixed precision, its outputs back in float32.
"""

from __future__ import annotations

import copy
import itertools
import os

#: Attribute of a network under which :func:`inference_copy` caches its folded copy (not a submodule).
_CACHE = "_napari_instance_tuner_inference_copy"


def choose_threads(cores: int, busy: float, most: int | None = None) -> int:
    """Threads for one inference call: the cores other processes leave free, at least 1, at most ``most``.

    Parameters
    ----------
    cores : int
        CPU cores this process may use.
    busy : float
        Cores kept busy by other processes now (runnable tasks besides this one).
    most : int, optional
        Upper limit (e.g. torch's configured thread count).

    Returns
    -------
    int
    """
    free = int(cores - max(busy, 0.0) + 0.5)
    return max(1, min(free, most or cores, cores))


def busy_cores() -> float:
    """Runnable tasks of other processes now (Linux ``/proc/loadavg``, minus this reader); 0 elsewhere."""
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return float(max(running - 1, 0))


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS says, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


#: Environment variable that fixes the number of inference threads (else chosen from the machine's load).
THREADS_ENV = "NAPARI_INSTANCE_TUNER_THREADS"


def inference_threads(most: int | None = None) -> int:
    """:func:`choose_threads` for this machine now; ``NAPARI_INSTANCE_TUNER_THREADS`` fixes the count."""
    fixed = os.environ.get(THREADS_ENV, "").strip()
    if fixed.isdigit() and int(fixed) > 0:
        return int(fixed)
    return choose_threads(available_cores(), busy_cores(), most)


class cpu_threads:  # used like a function: ``with cpu_threads(n):``
    """Context manager: torch runs with ``n`` intra-op threads inside, its former count is restored after."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        import torch  # deferred: torch

        self.saved = torch.get_num_threads()
        if self.n != self.saved:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        import torch  # deferred: torch

        if torch.get_num_threads() != self.saved:
            torch.set_num_threads(self.saved)


def _last_conv(module):
    """The convolution whose output ``module`` returns: itself, or the last child of a Sequential of them."""
    from torch import nn  # deferred: torch

    if isinstance(module, nn.Conv2d):
        return module
    if isinstance(module, nn.Sequential) and len(module) and isinstance(module[-1], nn.Conv2d):
        return module[-1]
    return None


def fold_batchnorm(model):
    """Fold every ``BatchNorm2d`` that directly follows a convolution in a Sequential into it, in place.

    ``y = gamma (conv(x) - mean) / sqrt(var + eps) + beta`` becomes one convolution with weights scaled per
    output channel and a bias; the batch norm is replaced by ``nn.Identity``. Only valid in eval mode
    (running statistics): use it on a copy (see :func:`inference_copy`), never on a network that trains.

    Returns
    -------
    torch.nn.Module
        ``model``, for chaining. The number of folded batch norms is in ``model.folded_batchnorms``.
    """
    import torch  # deferred: torch
    from torch import nn  # deferred: torch

    folded = 0
    with torch.no_grad():
        for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
            names = list(seq._modules)
            for prev, name in itertools.pairwise(names):
                bn, conv = seq._modules[name], _last_conv(seq._modules[prev])
                if not isinstance(bn, nn.BatchNorm2d) or conv is None or not bn.track_running_stats:
                    continue
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
                    1.0 / torch.sqrt(bn.running_var + bn.eps)
                shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                conv.bias = nn.Parameter(bias * scale + shift)
                seq._modules[name] = nn.Identity()
                folded += 1
    model.folded_batchnorms = folded
    return model


def inference_copy(model):
    """An eval-mode copy of ``model`` with batch norm folded (:func:`fold_batchnorm`), cached until its
    parameters, buffers or device change; ``model`` itself is untouched (it may go on training). A network
    without batch norm (group norm, as layering and Mask R-CNN use) is returned as it is, not copied."""
    from torch import nn  # deferred: torch

    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model
    state = model.state_dict()
    key = tuple((k, v._version, v.data_ptr()) for k, v in state.items())
    cached = model.__dict__.get(_CACHE)
    if cached is not None and cached[0] == key:
        return cached[1]
    model.__dict__.pop(_CACHE, None)  # not deep-copied into the copy
    folded = fold_batchnorm(copy.deepcopy(model).eval())
    model.__dict__[_CACHE] = (key, folded)
    return folded


def _to_float(out):
    """``out`` (a tensor, or a list, tuple or dict of them) with floating tensors as float32."""
    import torch  # deferred: torch

    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return type(out)((k, _to_float(v)) for k, v in out.items())
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(v) for v in out)
    return out


def AutocastFloat32(inner, context):  # builds a module: named like one
    """A module that runs ``inner`` inside ``context()`` (an autocast) and returns its outputs in float32.

    What follows it (e.g. box decoding) then computes in float32 whatever precision ``inner`` used.
    """
    from torch import nn  # deferred: torch

    class _Autocast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            with context():
                return _to_float(self.inner(*args))

    return _Autocast()
