"""Folding batch norm into the convolution before it, for image towers that never train.

In eval mode (or frozen) a BatchNorm is a per-channel affine map, y = (x - μ)·γ/√(σ²+ε) + β, so
it can be folded into the weights and bias of the convolution that feeds it. That removes one
full read and write of every activation map per BatchNorm — about 8% of an RN50 forward on CPU,
where the multiply-add runs as its own pass (no convolution epilogue fuses it in eager mode) —
and the result equals the unfolded tower up to float rounding.

Only for frozen towers (the teacher, inference): folding a *trainable* convolution changes the
parametrisation SGD follows, so the student keeps its FrozenBatchNorm2d layers separate.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)
# open_clip's ModifiedResNet names its pairs conv1/bn1 … conv3/bn3 (stem and bottlenecks) and
# "0"/"1" inside each bottleneck's downsample (after an "-1" average pool).
PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("0", "1"))


def _folded(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    folded = copy.deepcopy(conv)
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                        norm.eps, norm.weight, norm.bias)
    folded.weight = nn.Parameter(weight.detach(), requires_grad=False)
    folded.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return folded


def fold_batchnorm(tower: nn.Module) -> int:
    """Fold every conv→norm pair of `tower` in place (norm becomes Identity); returns the count.

    The tower must be frozen: a BatchNorm still in training mode keeps updating its statistics,
    which a folded convolution cannot follow, so that is refused.
    """
    count = 0
    for module in list(tower.modules()):
        for conv_name, norm_name in PAIRS:
            conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
            if not (isinstance(conv, nn.Conv2d) and isinstance(norm, NORMS)):
                continue
            if norm.training and isinstance(norm, nn.BatchNorm2d):
                raise ValueError("fold_batchnorm needs a frozen tower: call .eval() first")
            setattr(module, conv_name, _folded(conv, norm))
            setattr(module, norm_name, nn.Identity())
            count += 1
    return count

