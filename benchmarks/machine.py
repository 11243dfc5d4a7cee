"""What the benchmarks ran on, for their printed headers (shared by the benchmark scripts)."""

from __future__ import annotations

import argparse
import platform

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_training_step_options(parser: argparse.ArgumentParser) -> None:
    """The options every training-step benchmark takes: where, what model, how big, how long."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--model", default="RN50", help="open_clip ModifiedResNet name (random weights)")
    parser.add_argument("--batch-size", type=int, default=2, help="images per step")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off", help="autocast dtype of the step")
