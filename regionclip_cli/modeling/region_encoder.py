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

import math

import torch
from torch import nn
from torchvision.ops import roi_align

TRUNK_STRIDE = 16


class RegionEncoder(nn.Module):
    """Wraps (and shares the weights of) an open_clip `ModifiedResNet` image tower.

    `box_chunk` bounds memory: layer4 runs on at most that many boxes at once, which keeps
    1000 proposals on an RN50 at a few hundred MB instead of several GB.
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

    @property
    def output_dim(self) -> int:
        return int(self.visual.output_dim)

    def layer1(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised images → stride-4 layer1 features."""
        return self.visual.layer1(self.visual.stem(images))

    def trunk(self, images: torch.Tensor, layer1_features: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 3, H, W] normalised images → [B, C, ~H/16, ~W/16] res4 features.

        `layer1_features` skips the stem and layer1 when another tower with the same frozen
        stem and layer1 (the teacher, for a student initialised from it) has computed them.
        """
        if layer1_features is None:
            layer1_features = self.layer1(images)
        return self.visual.layer3(self.visual.layer2(layer1_features))

    def pool(self, features: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """Embed boxes ([Ni, 4] x1y1x2y2 in input-tensor pixels, one tensor per image) → [ΣNi, D].

        Outputs follow the order of `boxes` (image by image, box by box), unnormalised like
        `encode_image`.
        """
        if len(boxes) != features.shape[0]:
            raise ValueError(f"{len(boxes)} box tensors for a batch of {features.shape[0]} images")
        total = sum(int(b.shape[0]) for b in boxes)
        if total == 0:
            return features.new_zeros((0, self.output_dim))
        regions = roi_align(
            features,
            [b.to(device=features.device, dtype=features.dtype) for b in boxes],
            output_size=self.roi_size,
            spatial_scale=1.0 / TRUNK_STRIDE,
            sampling_ratio=0,
            aligned=True,
        )
        visual = self.visual
        return torch.cat(
            [attention_pool(visual.attnpool, visual.layer4(chunk)) for chunk in regions.split(self.box_chunk)]
        )

    def forward(self, images: torch.Tensor, boxes: list[torch.Tensor],
                layer1_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(self.trunk(images, layer1_features), boxes)



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


def embed_image_regions(encoder: RegionEncoder, images: list, boxes: list[torch.Tensor],
                        device: torch.device) -> list[torch.Tensor]:
    """L2-normalised float embeddings, one [Ni, D] tensor per image, for prepared images.

    `images` carry `.tensor` (resized, normalised [3, H, W]) and `.scale` (original → input
    pixels), as `images.LoadedImage` does; `boxes` are in original-image pixels.
    """
    from regionclip_cli.data.images import pad_batch

    batch = pad_batch([image.tensor for image in images]).to(device)
    scaled = [b.to(device) * image.scale for b, image in zip(boxes, images)]
    embeddings = nn.functional.normalize(encoder(batch, scaled).float(), dim=-1)
    return list(embeddings.split([len(b) for b in boxes]))
