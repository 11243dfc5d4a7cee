"""The student image tower's starting weights (the freezing and export helpers: modeling/freezing.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.modeling.checkpoints import load_checkpoint


def load_student_weights(visual: torch.nn.Module, path: Path) -> None:
    """Start the student from another run's image tower (a CLIP or image-tower checkpoint)."""
    checkpoint = load_checkpoint(path)
    prefix = "visual." if any(k.startswith("visual.") for k in checkpoint.state_dict) else ""
    state = {k[len(prefix):]: v for k, v in checkpoint.state_dict.items() if k.startswith(prefix)}
    missing, unexpected = visual.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RegionclipError(f"student.weights {path}: does not fit the teacher's image tower "
                              f"(e.g. {(missing or unexpected)[0]})")
