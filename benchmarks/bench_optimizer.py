"""The pretraining optimiser step: gradient clipping + SGD, one tensor at a time vs `foreach`.

    python benchmarks/bench_optimizer.py                  # RN50 student, CPU, 1 thread
    python benchmarks/bench_optimizer.py --device cuda

The tensors are the ones a RegionCLIP student trains (RN50's image tower from layer2 on, the
paper's freeze_at 2), with random gradients. Both variants run interleaved in one process, on
their own copies of the parameters, and the median of the timed repeats is reported with the
ratio; the engine (`engine/optim.py`) leaves the choice to torch's default (foreach on CUDA, not on CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from machine import device_name, synchronize


def student_parameters(model: str, device: torch.device) -> list[torch.Tensor]:
    import open_clip

    visual = open_clip.create_model(model, pretrained=None).visual
    frozen = ("conv", "bn", "layer1")
    return [p.detach().to(device).requires_grad_(True)
            for name, p in visual.named_parameters() if not name.startswith(frozen)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="RN50")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per variant (median reported)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    reference = student_parameters(args.model, device)
    print(f"{device_name(device)}, {args.threads} thread(s); {args.model} student: {len(reference)} tensors, "
          f"{sum(p.numel() for p in reference) / 1e6:.1f} M values")

    variants = {}
    for foreach in (False, True):
        params = [p.detach().clone().requires_grad_(True) for p in reference]
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=1e-4, foreach=foreach)
        variants[foreach] = (params, optimizer, [])
    for _ in range(args.repeats + 1):  # the first round builds the momentum buffers: untimed
        for foreach, (params, optimizer, times) in variants.items():
            synchronize(device)
            started = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, 5.0, foreach=foreach)
            optimizer.step()
            synchronize(device)
            times.append(time.perf_counter() - started)
    one_at_a_time = statistics.median(variants[False][2][1:])
    foreach_time = statistics.median(variants[True][2][1:])
    print(f"clip + SGD step, one tensor at a time: {one_at_a_time * 1000:8.1f} ms (median of {args.repeats})")
    print(f"clip + SGD step, foreach:              {foreach_time * 1000:8.1f} ms")
    print(f"foreach speed-up: {one_at_a_time / foreach_time:.2f}x")


if __name__ == "__main__":
    main()
