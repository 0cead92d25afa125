"""The torch side of tiled inference: one tile through a torch network, as :func:`.predict.predict_tiled` runs it.

The network runs as a copy with batch norm folded (:func:`.cpu.inference_copy`), in channels-last memory
order, under ``inference_mode``, on the CPU with the threads of :func:`.cpu.inference_threads`; the logits
become probabilities with a sigmoid. :class:`~.onnx_runtime.OnnxNetwork` offers the same ``tile_runner``.
"""

from __future__ import annotations

import numpy as np

from .cpu import cpu_threads, inference_copy, inference_threads


def torch_tile_runner(model, device: str = "cpu"):
    """``run(crop) -> probabilities`` for a torch network: float32 (h, w, C) -> float32 (out, h, w) in [0, 1].

    Parameters
    ----------
    model : torch.nn.Module
        Maps (1, C, h, w) float32 to (1, out, h, w) logits; set to eval mode and moved to ``device``.
    device : str
        A resolved torch device (see :func:`.predict.choose_device`).
    """
    import torch  # deferred: torch

    model = inference_copy(model.to(device).eval())  # batch norm folded into the convolutions
    memory_format = torch.channels_last  # fast for separable convolutions on CPUs and for float16 on GPUs
    model = model.to(memory_format=memory_format)
    threads = inference_threads(torch.get_num_threads()) if device == "cpu" else torch.get_num_threads()

    def run(crop: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None].to(device)
        batch = batch.contiguous(memory_format=memory_format)
        with torch.inference_mode(), cpu_threads(threads):
            return torch.sigmoid(model(batch).float())[0].cpu().numpy()

    return run
