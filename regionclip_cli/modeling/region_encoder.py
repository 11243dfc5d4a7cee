"""Region embeddings from a CLIP ResNet: one trunk pass per image, CLIP's own head per box.

Cropping every box and running CLIP on each crop repeats the whole network per box. RegionCLIP
instead runs the trunk (stem → layer3, stride 16) once on the whole image, cuts each box out of
that map with RoIAlign at twice the attention pool's grid, and finishes every box with CLIP's
layer4 (which halves the grid) and attention pool. The pool's positional embedding then sees the
grid it was trained on, so the output lives in CLIP's embedding space, and a box covering a whole
224×224 image reproduces `encode_image` exactly: with `aligned=True` and one sample per bin, the
RoIAlign samples land on the feature map's own cell centres.

The attention pool is CLIP's own (same weights, same result), computed for the one query it
returns: open_clip's module attends from all P*P+1 tokens and keeps only the first, and projects
keys and values of every token; `attention_pool` folds the key projection into the query and the
value projection after the weighted sum, which is exact algebra and cuts the pool from ~1.5 GFLOPs
to ~45 MFLOPs per box for RN50 (a third of the per-box cost of the stock pool plus layer4).

Inputs are tensors and boxes in input pixels: images already resized and normalised (the data
layer's `ImageTransform` does that), boxes already scaled by the same factor.

Batches of differently sized images are expected zero-padded at the bottom/right (zero is the mean
colour after normalisation), each image at the top-left of its slot. Every layer is
translation-equivariant with its downsampling anchored at the top-left, so an image's feature map
in a padded batch equals its map alone except within the trunk's receptive field of the padded
border: boxes at an image's right or bottom edge see the padding as context (as a crop would see
zero-padding) and their embeddings shift slightly; boxes away from it, and every box of an image
that fills the batch unpadded, are unaffected. Batch norm runs in eval mode, so images never
influence each other.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torchvision.ops import roi_align

TRUNK_STRIDE = 16
# Elements one trunk call may produce in its largest activation. torchvision's and PyTorch's CPU
# kernels index some buffers with 32-bit integers: a batch of 150 images at 800 px crashed
# (exit 139) past 2**31 elements, so batches are cut into image chunks well below that.
MAX_TRUNK_ELEMENTS = 2**29


class RegionEncoder(nn.Module):
    """Wraps (and shares the weights of) an open_clip `ModifiedResNet` image tower.

    Memory stays bounded whatever the batch: the trunk runs on image chunks whose largest
    activation stays under `MAX_TRUNK_ELEMENTS`, and RoIAlign, layer4 and the attention pool on
    at most `box_chunk` boxes at once (1000 proposals on an RN50 take a few hundred MB instead of
    several GB). Chunking changes no value: every image and every box is computed independently.
    """

    def __init__(self, visual: nn.Module, box_chunk: int = 256):
        super().__init__()
        if not all(hasattr(visual, part) for part in ("stem", "layer3", "layer4", "attnpool")):
            raise TypeError(
                f"RegionEncoder needs an open_clip ModifiedResNet image tower, got {type(visual).__name__}"
            )
        self.visual = visual
        rows = visual.attnpool.positional_embedding.shape[0]
        self.pool_grid = math.isqrt(rows - 1)
        if self.pool_grid ** 2 + 1 != rows:
            raise ValueError(f"attention pool positional embedding has {rows} rows, not P*P+1")
        self.roi_size = 2 * self.pool_grid  # layer4 halves it back to the pool's grid
        self.box_chunk = box_chunk
        # The stem's last convolution (full width, half resolution) holds the largest activation.
        self._stem_width = int(visual.conv3.out_channels)

    @property
    def output_dim(self) -> int:
        return int(self.visual.output_dim)

    def layer1(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised images → stride-4 layer1 features."""
        return self.visual.layer1(self.visual.stem(images))

    def images_per_call(self, height: int, width: int) -> int:
        """How many images of this size one trunk call takes (see `MAX_TRUNK_ELEMENTS`)."""
        per_image = self._stem_width * math.ceil(height / 2) * math.ceil(width / 2)
        return max(1, MAX_TRUNK_ELEMENTS // max(per_image, 1))

    def trunk(self, images: torch.Tensor, layer1_features: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 3, H, W] normalised images → [B, C, ~H/16, ~W/16] res4 features.

        `layer1_features` skips the stem and layer1 when another tower with the same frozen
        stem and layer1 (the teacher, for a student initialised from it) has computed them.
        """
        chunk = self.images_per_call(images.shape[-2], images.shape[-1])
        if images.shape[0] > chunk:
            parts = [None] * images.shape[0] if layer1_features is None else layer1_features.split(chunk)
            return torch.cat([self._trunk(part, given)
                              for part, given in zip(images.split(chunk), parts)])
        return self._trunk(images, layer1_features)

    def _trunk(self, images: torch.Tensor, layer1_features: torch.Tensor | None) -> torch.Tensor:
        if layer1_features is None:
            layer1_features = self.layer1(images)
        return self.visual.layer3(self.visual.layer2(layer1_features))

    def pool(self, features: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """Embed boxes ([Ni, 4] x1y1x2y2 in input-tensor pixels, one tensor per image) → [ΣNi, D].

        Outputs follow the order of `boxes` (image by image, box by box), unnormalised like
        `encode_image`. RoIAlign runs in float32 whatever the features' dtype, as torchvision's
        own autocast rule does: a bf16 box coordinate near 1,000 px is off by up to 4 px.
        """
        if len(boxes) != features.shape[0]:
            raise ValueError(f"{len(boxes)} box tensors for a batch of {features.shape[0]} images")
        total = sum(int(b.shape[0]) for b in boxes)
        if total == 0:
            return features.new_zeros((0, self.output_dim))
        exact = torch.promote_types(features.dtype, torch.float32)  # at least float32
        rois = torch.cat([
            torch.cat([torch.full((len(b), 1), float(i), device=features.device, dtype=exact),
                       b.to(device=features.device, dtype=exact)], dim=1)
            for i, b in enumerate(boxes)
        ])
        features32 = features.to(exact)
        visual = self.visual
        embedded = []
        for chunk in rois.split(self.box_chunk):
            regions = roi_align(features32, chunk, output_size=self.roi_size,
                                spatial_scale=1.0 / TRUNK_STRIDE, sampling_ratio=0, aligned=True)
            embedded.append(attention_pool(visual.attnpool, visual.layer4(regions.to(features.dtype))))
        return torch.cat(embedded)

    def forward(self, images: torch.Tensor, boxes: list[torch.Tensor],
                layer1_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(self.trunk(images, layer1_features), boxes)


def frozen_region_encoder(visual: nn.Module, *, box_chunk: int = 256) -> RegionEncoder:
    """An inference-only region encoder on a batch-norm-folded *copy* of `visual`.

    The caller's tower is left as it was (training mode, batch norm and all), so the same loaded
    CLIP can still be trained, saved or encoded with afterwards. The copy is frozen and in eval
    mode, and its batch norm is folded into the convolutions (exact, faster).
    """
    from regionclip_cli.modeling.batchnorm_folding import fold_batchnorm

    tower = copy.deepcopy(visual).eval().requires_grad_(False)
    fold_batchnorm(tower)
    return RegionEncoder(tower, box_chunk=box_chunk).eval()


def attention_pool(pool: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """open_clip `AttentionPool2d.forward` for its only used output, the mean token's query.

    With one query q per head, q·(W_k t + b_k) = (W_kᵀ q)·t + q·b_k, and the last term is the same
    for every token so softmax drops it; Σ a_j (W_v t_j + b_v) = W_v (Σ a_j t_j) + b_v because the
    weights sum to one. So neither keys nor values are ever projected: [N, C, P, P] → [N, D].
    """
    batch, channels = features.shape[:2]
    heads = pool.num_heads
    head_dim = channels // heads
    tokens = features.flatten(2).transpose(1, 2)  # [N, P*P, C]
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
    tokens = tokens + pool.positional_embedding.to(tokens.dtype)  # [N, L, C]
    query = nn.functional.linear(tokens[:, 0], pool.q_proj.weight, pool.q_proj.bias) * head_dim ** -0.5
    query = query.view(batch, heads, head_dim).transpose(0, 1)  # [H, N, d]
    key_weight = pool.k_proj.weight.view(heads, head_dim, channels)  # [H, d, C]
    folded = torch.bmm(query, key_weight.to(query.dtype)).transpose(0, 1)  # [N, H, C]
    attention = torch.bmm(folded, tokens.transpose(1, 2)).softmax(dim=-1)  # [N, H, L]
    mixed = torch.bmm(attention, tokens).transpose(0, 1)  # [H, N, C]
    value_weight = pool.v_proj.weight.view(heads, head_dim, channels)
    values = torch.bmm(mixed, value_weight.to(mixed.dtype).transpose(1, 2))  # [H, N, d]
    values = values.transpose(0, 1).reshape(batch, channels) + pool.v_proj.bias.to(values.dtype)
    return nn.functional.linear(values, pool.c_proj.weight, pool.c_proj.bias)
