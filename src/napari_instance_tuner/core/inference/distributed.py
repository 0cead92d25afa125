"""Running work on dask.distributed: an embedded local cluster or an existing scheduler; one model per worker.

The same tasks run in this process (:class:`SerialExecutor`) or on a dask cluster (:class:`DaskExecutor`):
a ``LocalCluster`` of worker *processes* sized to the machine, or any cluster whose scheduler address is given
(SLURM through dask-jobqueue, Kubernetes, SSH...). Tasks name the weights by path and SHA-256
(:class:`ModelRef`); each worker process loads them once and keeps them (:func:`worker_model`).

Workers must see the same files as the client (a shared file system): inputs are read and outputs written by
path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import InstanceTunerError, WeightsError
from .runtime import load_for_runtime

#: Models loaded by this process (a dask worker process, or the client running tasks serially): sha256 ->
#: LoadedModel, plus ``"_loads"``: how many were loaded. Explicitly a per-process cache, read only here.
_PROCESS_MODELS: dict[str, Any] = {}


@dataclass
class ModelRef:
    """Weights named by path and SHA-256; pickles without the loaded model, which workers load once.

    ``loaded`` (optional) is the model already loaded in this process, used as is when the task runs here;
    ``runtime`` what runs its network (``"torch"`` or ``"onnx"``, see :mod:`.runtime`).
    """

    path: str
    sha256: str
    loaded: Any = field(default=None, repr=False, compare=False)
    runtime: str = "torch"

    def __getstate__(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "loaded": None, "runtime": self.runtime}

    def get(self) -> Any:
        """The :class:`~..io.checkpoint.LoadedModel` (see :func:`worker_model`)."""
        return self.loaded if self.loaded is not None else worker_model(self)


def _model_cache() -> dict:
    """This process's model cache: one per dask worker process (threads of a process share it)."""
    return _PROCESS_MODELS


def worker_model(ref: ModelRef) -> Any:
    """Load ``ref``'s weights once per worker process (cached by SHA-256) and return the LoadedModel.

    Raises
    ------
    WeightsError
        If the file at ``ref.path`` has another SHA-256 than ``ref.sha256``.
    """
    cache = _model_cache()
    key = ref.sha256 if ref.runtime == "torch" else f"{ref.sha256}:{ref.runtime}"
    if key not in cache:
        loaded = load_for_runtime(ref.path, ref.runtime)
        if loaded.sha256 != ref.sha256:
            raise WeightsError(f"{ref.path} changed on this worker (SHA-256 {loaded.sha256[:12]}…, "
                               f"expected {ref.sha256[:12]}…)")
        cache[key] = loaded
        cache["_loads"] = cache.get("_loads", 0) + 1
    return cache[key]


def model_loads() -> int:
    """How many models this process (or dask worker) has loaded; one per weights file is the goal."""
    return int(_model_cache().get("_loads", 0))


def limit_threads(threads: int | None, network: Any = None) -> None:
    """Cap the intra-op threads of a worker (several workers share the machine's cores): torch's, or those of
    ``network`` where it runs on ONNX Runtime (:class:`~.onnx_runtime.OnnxNetwork`, never importing torch)."""
    if threads and hasattr(network, "tile_runner"):
        network.threads = threads
    elif threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


class SerialExecutor:
    """Runs tasks here, one after the other, in order."""

    workers = 1
    address = "in-process"

    def imap_unordered(self, fn: Callable, items: Iterable[tuple[Any, tuple]]) -> Iterator[tuple[Any, Any]]:
        """Yield ``(key, fn(*args))`` for every ``(key, args)`` of ``items``."""
        for key, args in items:
            yield key, fn(*args)


class DaskExecutor:
    """Runs tasks on a dask.distributed client, a bounded number in flight, yielding results as they finish."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.address = client.scheduler.address

    @property
    def workers(self) -> int:
        """Workers currently connected (at least 1)."""
        return max(1, len(self.client.scheduler_info(n_workers=-1).get("workers", {})))

    def imap_unordered(self, fn: Callable, items: Iterable[tuple[Any, tuple]],
                       in_flight: int | None = None) -> Iterator[tuple[Any, Any]]:
        """Yield ``(key, fn(*args))`` as tasks finish; at most ``in_flight`` (2 per worker) submitted at once.

        ``pure=False``: every call runs (results are files and stitched tiles, not cacheable values).
        """
        from distributed import as_completed

        limit = in_flight or 2 * self.workers
        items = iter(items)
        keys: dict[Any, Any] = {}
        pending = as_completed()
        for key, args in items:
            future = self.client.submit(fn, *args, pure=False)
            keys[future.key] = key
            pending.add(future)
            if pending.count() >= limit:
                break
        for future in pending:
            key = keys.pop(future.key)
            try:
                result = future.result()
            finally:
                future.release()
            nxt = next(items, None)
            if nxt is not None:
                new = self.client.submit(fn, *nxt[1], pure=False)
                keys[new.key] = nxt[0]
                pending.add(new)
            yield key, result


def default_workers(threads_per_worker: int = 1) -> int:
    """Worker processes for an embedded cluster: one per ``threads_per_worker`` CPU cores available."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, threads_per_worker))


@contextlib.contextmanager
def executor(scheduler: str | None = None, workers: int | None = None, threads_per_worker: int = 1,
             memory_limit: str | None = "auto") -> Iterator[SerialExecutor | DaskExecutor]:
    """Where tasks run: ``workers=0`` here; an existing cluster at ``scheduler``; else an embedded LocalCluster.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running dask scheduler (``tcp://host:8786``), e.g. of a dask-jobqueue SLURMCluster.
    workers : int, optional
        Worker processes of the embedded cluster (default: :func:`default_workers`); 0 runs serially here.
    threads_per_worker : int
        Threads per worker process (torch is limited to as many).
    memory_limit : str, optional
        Per-worker memory limit of the embedded cluster (dask syntax; ``"auto"`` shares the machine's).
    """
    if scheduler is None and workers == 0:
        yield SerialExecutor()
        return
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise InstanceTunerError(f"cannot reach the dask scheduler at {scheduler!r} "
                                     f"({type(exc).__name__}); check the address, or leave out --scheduler") from None
        with client:
            yield DaskExecutor(client)
        return
    n = workers or default_workers(threads_per_worker)
    with LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True, memory_limit=memory_limit,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        yield DaskExecutor(client)
