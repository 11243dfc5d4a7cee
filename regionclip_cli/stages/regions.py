"""The region pipeline every inference stage shares: images → proposals → region embeddings.

Images stream through in small batches: decode, resize and normalise in background threads (the
data layer's `ImageLoader` + `ImageTransform`), propose regions in original pixels, scale them to
input pixels, one trunk pass per batch and every region through RoIAlign + CLIP's layer4 +
attention pool (the modelling layer's `RegionEncoder`, which only sees tensors). Memory stays
bounded by the batch, not by the number of images. `zeroshot` and `pseudolabel` score what comes
out against a vocabulary or a concept pool; the detector's test path will do the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from regionclip_cli.core.errors import InputError
from regionclip_cli.data.images import ImageLoader, ImageTransform, LoadedImage, NamedImage
from regionclip_cli.data.proposals import ProposalSource
from regionclip_cli.modeling.region_encoder import RegionEncoder


@dataclass
class EmbeddedImage:
    """One image's regions: boxes in original pixels (CPU), L2-normalised embeddings [N, D] (device)."""

    image: LoadedImage
    boxes: torch.Tensor
    embeddings: torch.Tensor
    image_id: int | None  # the id a COCO box file gives the image
    problems: list[str]  # boxes that were skipped, one line each
    objectness: torch.Tensor | None = None  # RPN proposals: each box's objectness probability

    @property
    def path(self) -> Path:
        return self.image.path


@dataclass
class SkippedImage:
    """An image that could not be used (unreadable, or no entry in the box file)."""

    path: Path
    reason: str


def embed_regions(
    encoder: RegionEncoder,
    transform: ImageTransform,
    proposals: ProposalSource,
    inputs: Iterable[str | os.PathLike | NamedImage],
    *,
    device: torch.device,
    batch_size: int = 1,
    loader_threads: int = 2,
    keep_originals: bool = False,
) -> Iterator[EmbeddedImage | SkippedImage]:
    """Yield one result per input, in order; bad images become `SkippedImage` and the rest go on."""
    loader = ImageLoader(inputs, transform, workers=loader_threads, keep_original=keep_originals)
    pending: list[tuple[LoadedImage, torch.Tensor, int | None, list[str], torch.Tensor | None]] = []
    mean = torch.tensor(transform.mean).view(3, 1, 1)
    std = torch.tensor(transform.std).view(3, 1, 1)
    for item in loader:
        if not isinstance(item, LoadedImage):
            yield SkippedImage(item.path, item.message)
            continue
        try:
            if proposals.needs_pixels:  # the RPN normalises the raw picture its own way
                found = proposals.for_pixels((item.tensor * std + mean).to(device), item.scale)
            else:
                found = proposals.for_image(item.path, *item.original_size)
        except InputError as error:
            yield SkippedImage(item.path, str(error))
            continue
        pending.append((item, found.boxes, found.image_id, found.problems, found.objectness))
        if len(pending) == batch_size:
            yield from _embed(encoder, transform, pending, device)
            pending = []
    if pending:
        yield from _embed(encoder, transform, pending, device)


def _embed(encoder: RegionEncoder, transform: ImageTransform, pending: list, device: torch.device
           ) -> Iterator[EmbeddedImage]:
    images = [p[0] for p in pending]
    with torch.inference_mode():
        batch = transform.batch([image.tensor for image in images]).to(device)
        scaled = [boxes.to(device) * image.scale for image, boxes, _, _, _ in pending]
        embeddings = torch.nn.functional.normalize(encoder(batch, scaled).float(), dim=-1)
    for (image, boxes, image_id, problems, objectness), emb in zip(
            pending, embeddings.split([len(p[1]) for p in pending])):
        yield EmbeddedImage(image, boxes.cpu(), emb, image_id, problems, objectness)


# Pictures draw a few well-separated boxes: overlapping labels cannot be read.
PICTURE_IOU = 0.3


def best_separated(detections: list[dict], threshold: float, iou: float = PICTURE_IOU) -> list[dict]:
    """The best detections whose boxes overlap no better one by more than `iou`, whatever the class."""
    from torchvision.ops import nms

    kept = [d for d in detections if d["score"] >= threshold]
    if not kept:
        return []
    boxes = torch.tensor([d["box"] for d in kept], dtype=torch.float32)
    scores = torch.tensor([d["score"] for d in kept], dtype=torch.float32)
    return [kept[i] for i in nms(boxes, scores, iou).tolist()]
