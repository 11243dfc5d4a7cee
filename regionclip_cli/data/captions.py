"""Image-caption data for pretraining, in a fixed order that any process count reproduces.

Every random choice of a training sample (flip, caption, random boxes) comes from a generator
seeded by (recipe seed, iteration, position in the global batch), and the global batch at
iteration i is a fixed slice of seeded epoch permutations. So a resumed run sees exactly the data
an uninterrupted one would, and N processes each taking their slice of the global batch see
exactly what one process would.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.data.coco import is_coco
from regionclip_cli.data.images import find_images
from regionclip_cli.data.proposals import FileNameIndex


@dataclass(frozen=True)
class CaptionedImage:
    path: Path
    captions: tuple[str, ...]


@dataclass
class CaptionedImages:
    items: list[CaptionedImage]
    images_without_captions: int
    captions_without_images: int


def _read_caption_rows(path: Path) -> list[tuple[str, list[str]]]:
    """(file name, captions) rows from JSON Lines or a COCO captions JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RegionclipError(f"{path}: not UTF-8 text (captions are JSON Lines or a COCO captions JSON)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if is_coco(data):  # no boxes, so not data.coco.read_coco: that checks detection annotations
        names = {int(img["id"]): str(img["file_name"]) for img in data["images"]}
        grouped: dict[int, list[str]] = {}
        for ann in data["annotations"]:
            if "caption" not in ann:
                raise RegionclipError(f"{path}: annotations have no 'caption': is this a detection file?")
            grouped.setdefault(int(ann["image_id"]), []).append(str(ann["caption"]))
        return [(names[i], caps) for i, caps in grouped.items() if i in names]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = row.get("file") or row.get("image") or row["file_name"]
            captions = row["captions"] if "captions" in row else [row["caption"]]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise RegionclipError(
                f"{path}:{number}: expected a JSON line with 'file' and 'captions' (or 'caption')"
            ) from None
        rows.append((str(name), [str(c) for c in captions if str(c).strip()]))
    return rows


def read_captioned_images(images: Path, captions: Path) -> CaptionedImages:
    """Pair the images under `images` with their captions, matched by file name."""
    paths, problems = find_images([images])
    if not paths:
        raise RegionclipError(f"data.images {images}: {'; '.join(problems) or 'no images found'}")
    items, unmatched_rows = match_captions(paths, captions)
    items = [item for item in items if item.captions]
    if not items:
        raise RegionclipError(
            f"data.captions {captions}: no caption matches an image under {images} (file names differ?)"
        )
    return CaptionedImages(items, len(paths) - len(items), unmatched_rows)


def match_captions(paths: list[Path], captions: Path) -> tuple[list[CaptionedImage], int]:
    """Each image with its captions (none where no row matches its file name), and how many
    caption rows matched no image."""
    rows = [row for row in _read_caption_rows(captions) if row[1]]
    index = FileNameIndex([name for name, _ in rows])
    found = [index.find(path) for path in paths]
    items = [CaptionedImage(path, tuple(rows[i][1]) if i is not None else ()) for path, i in zip(paths, found)]
    return items, len(rows) - len({i for i in found if i is not None})


def sample_generator(seed: int, iteration: int, position: int, stream: str = "") -> torch.Generator:
    """The generator for one sample of one iteration: identical however the batch is split.
    A named `stream` gives an independent generator for the same sample."""
    digest = hashlib.sha256((f"{seed}:{iteration}:{position}" + (f":{stream}" if stream else "")).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def global_batch_indices(num_items: int, batch_size: int, iteration: int, seed: int) -> list[int]:
    """Dataset indices of the global batch at `iteration`: consecutive slices of epoch permutations."""
    start = iteration * batch_size
    indices: list[int] = []
    epoch = start // num_items
    offset = start % num_items
    while len(indices) < batch_size:
        order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        take = order[offset: offset + batch_size - len(indices)].tolist()
        indices.extend(take)
        epoch += 1
        offset = 0
    return indices


def rank_slice(batch_size: int, rank: int, world_size: int) -> range:
    """Positions of the global batch that process `rank` handles."""
    if batch_size % world_size:
        raise RegionclipError(
            f"train.batch_size {batch_size} is not divisible by the {world_size} processes; "
            f"use a multiple of {world_size}"
        )
    per_rank = batch_size // world_size
    return range(rank * per_rank, (rank + 1) * per_rank)
