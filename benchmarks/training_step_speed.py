"""Training step time in float32 and with ``--amp`` (bfloat16 autocast), for the shipped U-Net architectures.

For each shipped U-Net model (three-branch, layering) the architecture, batch size and crop of its own
training (its metadata) are built with fresh weights. One training step is the forward pass, a stand-in loss
(mean square of the logits, float32: the families' losses cost 0.1-0.2 s more per step and do not change with
``--amp``), the backward pass and an Adam step, channels_last as :func:`~napari_instance_tuner.core.training.loop.fit`
runs it. Median of ``--steps`` steps after two warm-up steps, for each precision (``--amp`` only where the device
computes in bfloat16 natively, as ``train`` refuses it elsewhere: on such a CPU the amp columns show "-").

"gradient cosine" compares the two precisions' gradients of the same batch at the same weights (1 = the same
direction): how closely a bfloat16 step follows the float32 one.

``--compile`` also times the float32 step of the model run through ``torch.compile`` (inductor; on a CPU it
needs a C++ compiler): "compiling s" is its first step (the compilation), then the median of ``--steps`` steps.
Measured on a 2-core AMD EPYC without bfloat16 (docs/benchmarks.md, session 31) it gained nothing that the
machine's noise did not hide, so ``train`` has no such option. ``NAME:K`` times member K of an ensemble (e.g.
``three-branch-glas-v10:1``, v10's EfficientNet-Lite2 network) with the batch of the ensemble's training.

    python benchmarks/training_step_speed.py [--steps 8] [--threads 2] [--device cpu] [--compile]
        [--models three-branch-glas-v8,three-branch-glas-v10:1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _model_and_batch(name: str, device: str):
    import torch

    from napari_instance_tuner.core.io.checkpoint import read_metadata, shipped_models
    from napari_instance_tuner.core.registry import get_family

    name, _, member = name.partition(":")
    meta = read_metadata(shipped_models()[name])
    family = get_family(meta["family"])
    architecture = meta["architecture"]
    if member:  # one network of an ensemble
        architecture = architecture["member_architectures"][int(member)]
    model = family.build_model(architecture)
    training = meta.get("training", {})
    batch, crop = int(training.get("batch_size", 8)), int(training.get("crop", 256))
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, meta["in_channels"], crop, crop, generator=generator)
    return model.to(device), x.to(device), f"{meta['family']}, batch {batch} x {crop} px"


def _step(model, x, optimiser, autocast) -> float:
    import torch

    start = time.perf_counter()
    with autocast:
        logits = model(x)
    loss = logits.float().square().mean()
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _gradient(model, x, autocast):
    import torch

    model.zero_grad(set_to_none=True)
    with autocast:
        logits = model(x)
    logits.float().square().mean().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="three-branch-glas,layering-bbbc010")
    parser.add_argument("--compile", action="store_true", help="also time the float32 step through torch.compile")
    args = parser.parse_args()

    import contextlib

    import torch

    from napari_instance_tuner.core.training.loop import bfloat16_supported, training_autocast

    torch.set_num_threads(args.threads)
    native = bfloat16_supported(args.device)  # amp is refused without it (training_autocast): float32 only
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads, native bfloat16: {native}")
    print(f"{'model':<22}{'setting':<34}{'float32 s/step':>15}{'amp s/step':>12}{'speed-up':>10}{'gradient cosine':>17}")
    for name in args.models.split(","):
        model, x, setting = _model_and_batch(name, args.device)
        memory = torch.channels_last if args.device == "cpu" else torch.contiguous_format
        model = model.to(memory_format=memory).train()
        x = x.contiguous(memory_format=memory)
        contexts = {"float32": contextlib.nullcontext()}
        if native:
            contexts["amp"] = training_autocast(args.device, True)
            grads = [_gradient(model, x, context) for context in contexts.values()]
            cosine = f"{float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)):>17.4f}"
        times = {}
        for label, context in contexts.items():
            optimiser = torch.optim.Adam(model.parameters(), lr=1e-6)
            runs = [_step(model, x, optimiser, context) for _ in range(args.steps + 2)][2:]
            times[label] = float(np.median(runs))
        amp = (f"{times['amp']:>12.2f}{times['float32'] / times['amp']:>9.1f}x{cosine}" if native
               else f"{'-':>12}{'-':>10}{'-':>17}")
        print(f"{name:<22}{setting:<34}{times['float32']:>15.2f}{amp}")
        if args.compile:
            _time_compiled(model, x, args, times["float32"])


def _time_compiled(model, x, args, eager: float) -> None:
    import contextlib

    import torch

    stepped = torch.compile(model)  # shares model's weights
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-6)
    first = _step(stepped, x, optimiser, contextlib.nullcontext())
    runs = [_step(stepped, x, optimiser, contextlib.nullcontext()) for _ in range(args.steps + 1)][1:]
    compiled = float(np.median(runs))
    print(f"{'':<22}{'compiled, float32':<34}{compiled:>15.2f}  compiling {first:.0f} s, "
          f"speed-up {eager / compiled:.2f}x over eager float32")


if __name__ == "__main__":
    main()
