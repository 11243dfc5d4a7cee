"""Frozen parts of a trainable CLIP image tower, and its export as a whole CLIP state dict.

Shared by every stage that trains a copy of CLIP's image tower (pretrain's student, finetune's
detector backbone): the paper freezes batch norm and the first stages, and exports keep CLIP's
own key layout so `load_clip(..., weights=)` reads them strictly.
"""

from __future__ import annotations

import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from regionclip_cli.modeling.clip import LoadedClip


def freeze_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d with the same statistics (the paper's frozen BN)."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen.to(child.weight.device))
        else:
            freeze_batchnorm(child)
    return module


def freeze_stages(visual: torch.nn.Module, freeze_at: int) -> None:
    """Freeze the stem (freeze_at >= 1) and the first `freeze_at - 1` residual stages."""
    stem = [visual.conv1, visual.bn1, visual.conv2, visual.bn2, visual.conv3, visual.bn3]
    stages = [stem, [visual.layer1], [visual.layer2], [visual.layer3], [visual.layer4], [visual.attnpool]]
    for modules in stages[:freeze_at]:
        for module in modules:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
    # The attention pool's key bias shifts all of a query's logits equally, so the softmax ignores
    # it and autograd never gives it a gradient; DDP would wait for one forever.
    visual.attnpool.k_proj.bias.requires_grad_(False)


def clip_state_template(teacher: LoadedClip) -> dict[str, torch.Tensor]:
    """What a whole-CLIP checkpoint takes from the teacher: its text side, and the image tower's
    `num_batches_tracked` counters that FrozenBatchNorm2d does not keep (so exports load strictly).
    """
    return {k: v.detach().cpu().clone() for k, v in teacher.model.state_dict().items()
            if not k.startswith("visual.") or k.endswith("num_batches_tracked")}


def student_state_as_clip(template: dict[str, torch.Tensor], student_visual: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A whole-CLIP state dict: the teacher's text side (`clip_state_template`) with the student's image tower."""
    state = dict(template)
    for key, value in student_visual.state_dict().items():
        state[f"visual.{key}"] = value.detach().cpu().clone()
    return state
