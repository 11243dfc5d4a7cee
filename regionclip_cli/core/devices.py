"""Device selection: one `--device` option everywhere, never a hard-coded CUDA call."""

from __future__ import annotations

import torch

from regionclip_cli.core.errors import RegionclipError


def resolve_device(spec: str = "auto", option: str = "--device") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; anything else is checked to exist.

    `option` names where the value came from in errors (a flag, a recipe key, a `--set`).
    """
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    cpu = "--device cpu" if option == "--device" else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise RegionclipError(f"{option} {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RegionclipError(f"{option} {spec}: CUDA is not available on this machine; use {cpu}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RegionclipError(
            f"{option} {spec}: only {torch.cuda.device_count()} CUDA device(s) visible"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RegionclipError(f"{option} {spec}: MPS is not available on this machine; use {cpu}")
    return device
