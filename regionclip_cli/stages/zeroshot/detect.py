"""`regionclip_cli.detect(...)`: the zeroshot stage in one call, on paths, PIL images or arrays."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.data.images import NamedImage
from regionclip_cli.data.proposals import ProposalConfig, RandomBoxConfig
from regionclip_cli.modeling.scoring import DetectionConfig
from regionclip_cli.stages.zeroshot.stage import ZeroShotConfig, run


def detect(
    images,
    vocabulary: str | Sequence[str],
    *,
    model: str | None = None,
    pretrained: str | None = None,
    weights: str | os.PathLike | None = None,
    boxes=None,
    device: str = "auto",
    templates: str = "ensemble",
    num_proposals: int = 300,
    score_threshold: float = 0.001,
    nms: float = 0.5,
    max_detections: int = 100,
    min_size: int | None = None,
    max_size: int | None = None,
    batch_size: int = 1,
    cache_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Detect `vocabulary`'s classes in `images`; one dict per image, as a detections.jsonl line.

    `images`: a path, a PIL image or an [H, W(, 3)] array, or a list of them (folders are
    searched). `vocabulary`: a built-in name ("coco", "lvis", ...), a file, "cat,dog" or a list
    of names. `boxes`: None for random proposals (good for region features, not for calibrated
    detections), a box file (as `--boxes`), or one [[x1, y1, x2, y2], ...] list per image.
    Returns `{"file", "width", "height", "detections": [{"box", "label", "category_id", "score"}]}`
    per image in input order (`file` is None for in-memory images); an image that cannot be used
    raises `RegionclipError` naming it.
    """
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    in_memory = not all(isinstance(i, (str, os.PathLike)) for i in items)
    inputs = [NamedImage(f"image-{n}", i) if not isinstance(i, (str, os.PathLike)) else Path(i)
              for n, i in enumerate(items)] if in_memory else [Path(i) for i in items]
    with tempfile.TemporaryDirectory(prefix="regionclip-detect-") as scratch:
        proposals = _proposals(boxes, inputs, Path(scratch), num_proposals)
        result = run(ZeroShotConfig(
            images=inputs, vocab=vocabulary if isinstance(vocabulary, str) else list(vocabulary), out=None,
            model=model, pretrained=pretrained, weights=Path(weights) if weights is not None else None,
            templates=templates, proposals=proposals,
            detection=DetectionConfig(score_threshold, nms, max_detections),
            min_size=min_size, max_size=max_size, batch_size=batch_size, device=device,
            cache_dir=Path(cache_dir) if cache_dir is not None else None, progress=False,
            keep_results=True, loader_threads=0))
    if result.failures:
        raise RegionclipError(result.failures[0])
    records = [r.as_record() for r in result.results]
    if in_memory:
        for record in records:
            record["file"] = None
    return records


def _proposals(boxes, inputs: list, scratch: Path, num_proposals: int) -> ProposalConfig:
    random = RandomBoxConfig(count=num_proposals)
    if boxes is None:
        return ProposalConfig("random", None, random)
    if isinstance(boxes, (str, os.PathLike)):
        return ProposalConfig("file", Path(boxes), random)
    per_image = list(boxes)
    if len(per_image) != len(inputs):
        raise RegionclipError(f"boxes: {len(per_image)} box lists for {len(inputs)} images; give one per image")
    names = [i.name if isinstance(i, NamedImage) else str(i) for i in inputs]
    if len(set(names)) != len(names):
        raise RegionclipError("boxes: the same image is given twice; pass it once")
    lines = [json.dumps({"file": name, "boxes": _plain(b)}) for name, b in zip(names, per_image)]
    path = scratch / "boxes.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ProposalConfig("file", path, random)


def _plain(boxes) -> list:
    tolist = getattr(boxes, "tolist", None)
    return tolist() if tolist is not None else [list(map(float, b)) for b in boxes]
