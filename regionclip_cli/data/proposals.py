"""Region proposals for an image: random boxes, or boxes read from a file.

RegionCLIP found random boxes nearly as good as RPN proposals for pretraining, and evaluates
zero-shot recognition with ground-truth boxes as proposals. Files may be a COCO annotation JSON
(its boxes become the proposals, matched to images by file name), a JSON object mapping file
names to `[x1, y1, x2, y2]` lists, or JSON Lines with `{"file": ..., "boxes": [...]}` (our own
detections JSONL, with `"detections"`, works too). All boxes are in original-image pixels.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch

from regionclip_cli.core.errors import InputError, RegionclipError
from regionclip_cli.data.coco import is_coco, read_coco


@dataclass(frozen=True)
class RandomBoxConfig:
    """Random boxes snapped to a `grid`-pixel lattice, sizes log-uniform from `min_size` to the image."""

    count: int = 300
    grid: int = 8
    min_size: int = 16
    seed: int = 0


def _generator_for(key: str, seed: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def random_boxes(width: int, height: int, spec: RandomBoxConfig, key: str = "") -> torch.Tensor:
    """[spec.count, 4] boxes inside the image, the same for the same (seed, key) on any machine."""
    gen = _generator_for(key, spec.seed)
    n = spec.count
    short = max(min(width, height), 1)
    lo = math.log(min(spec.min_size, short))
    hi = math.log(max(width, height))
    side = torch.exp(lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64))
    aspect = torch.exp(math.log(3.0) * (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1))
    w = (side * aspect.sqrt()).clamp(min=spec.min_size, max=width)
    h = (side / aspect.sqrt()).clamp(min=spec.min_size, max=height)
    x1 = torch.rand(n, generator=gen, dtype=torch.float64) * (width - w).clamp(min=0)
    y1 = torch.rand(n, generator=gen, dtype=torch.float64) * (height - h).clamp(min=0)
    g = spec.grid
    x2 = ((x1 + w) / g).ceil().mul(g).clamp(max=width)
    y2 = ((y1 + h) / g).ceil().mul(g).clamp(max=height)
    # Snapping down never leaves a box thinner than one grid step (or than the image).
    x1 = torch.minimum((x1 / g).floor().mul(g), x2 - g).clamp(min=0)
    y1 = torch.minimum((y1 / g).floor().mul(g), y2 - g).clamp(min=0)
    boxes = torch.stack([x1, y1, x2, y2], dim=1)
    return boxes.float()


def sanitize_boxes(boxes: torch.Tensor, width: int, height: int, origin: str) -> tuple[torch.Tensor, list[str]]:
    """Clip boxes to the image; drop and describe the ones that cannot be used.

    Inverted boxes (x2 < x1 or y2 < y1), non-finite ones and ones with no area inside the image
    are dropped, each with a line naming the image and the box; boxes that stick out are clipped.
    """
    problems: list[str] = []
    if boxes.numel() == 0:
        return boxes.reshape(0, 4), problems
    finite = torch.isfinite(boxes).all(dim=1)
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    clipped = boxes.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, height)
    empty = (clipped[:, 2] - clipped[:, 0] < 1) | (clipped[:, 3] - clipped[:, 1] < 1)
    keep = finite & ~inverted & ~empty
    for index in torch.nonzero(~keep).flatten().tolist():
        box = [round(v, 1) for v in boxes[index].tolist()]
        if not finite[index]:
            reason = "is not finite"
        elif inverted[index]:
            reason = "is inverted (x2 < x1 or y2 < y1)"
        elif min(box[2] - box[0], box[3] - box[1]) < 1:
            reason = "is degenerate (under one pixel wide or high)"
        else:
            reason = f"has no area inside the {width}x{height} image"
        problems.append(f"{origin}: box #{index} {box} {reason}; skipped")
    return clipped[keep], problems


def _posix_parts(path: str | Path) -> tuple[str, ...]:
    return PurePosixPath(str(path).replace("\\", "/")).parts


class FileNameIndex:
    """Finds the entry for an image path by the longest matching tail of its file name.

    Annotation files store names relative to some root ('val2017/x.jpg' or 'x.jpg'), users pass
    paths relative to anywhere, so we match the longest common tail and refuse ambiguity: a path
    that fits several entries equally well, or several images that would share one entry (two
    'x.jpg' in different folders against one 'x.jpg' in the file).
    """

    def __init__(self, names: list[str]):
        self.names = names
        self._by_tail: dict[tuple[str, ...], list[int]] = {}
        for index, name in enumerate(names):
            parts = _posix_parts(name)
            for k in range(len(parts)):
                self._by_tail.setdefault(parts[k:], []).append(index)

    def candidates(self, path: Path) -> list[int]:
        """Entries matching the longest tail of `path` that any entry has (one, several or none)."""
        parts = _posix_parts(path.as_posix())
        for k in range(len(parts)):
            hits = self._by_tail.get(parts[k:])
            if hits:
                return hits
        return []

    def find(self, path: Path) -> int | None:
        hits = self.candidates(path)
        return hits[0] if len(hits) == 1 else None

    def check_unambiguous(self, paths: list[Path], origin: str) -> None:
        """Refuse, before any work, image paths that fit several entries or share one entry."""
        claimed: dict[int, Path] = {}
        for path in paths:
            hits = self.candidates(path)
            if len(hits) > 1:
                names = ", ".join(repr(self.names[i]) for i in hits[:3])
                raise RegionclipError(
                    f"{origin}: {path} matches several entries ({names}); pass the images from a folder "
                    "whose relative paths match the file's names")
            if len(hits) == 1:
                other = claimed.setdefault(hits[0], path)
                if other != path:
                    raise RegionclipError(
                        f"{origin}: {other} and {path} both match the one entry {self.names[hits[0]]!r}; "
                        "two images cannot share boxes and an image id: give the file's names their "
                        "folders (e.g. 'a/x.jpg') or process the folders separately")


@dataclass
class ImageEntry:
    """What a file says about one image: its boxes and, for COCO files, its id and size."""

    boxes: torch.Tensor
    image_id: int | None = None
    width: int | None = None
    height: int | None = None


def _boxes_tensor(raw, origin: str) -> torch.Tensor:
    try:
        tensor = torch.tensor(raw, dtype=torch.float32)
    except (TypeError, ValueError):
        raise RegionclipError(f"{origin}: boxes must be lists of four numbers [x1, y1, x2, y2]") from None
    if tensor.numel() == 0:
        return tensor.reshape(0, 4)
    if tensor.dim() != 2 or tensor.shape[1] != 4:
        raise RegionclipError(f"{origin}: boxes must be lists of four numbers [x1, y1, x2, y2]")
    return tensor


class BoxFile:
    """Boxes from a COCO annotation JSON, a {file: boxes} JSON, or a JSON Lines file."""

    def __init__(self, path: str | Path, option: str = "--boxes"):
        self.path = Path(path)
        self.option = option
        if not self.path.is_file():
            raise RegionclipError(f"{option} {self.path}: no such file")
        names, entries = self._read()
        self._entries = entries
        self.index = FileNameIndex(names)

    def _read(self) -> tuple[list[str], list[ImageEntry]]:
        text = self.path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return self._read_jsonl(text)
        if is_coco(data):
            return self._read_coco(data)
        if isinstance(data, dict) and "file" in data and ("boxes" in data or "detections" in data):
            return self._read_jsonl(text)  # JSON Lines with a single line
        if isinstance(data, dict):
            names = list(data)
            return names, [_entry_from(data[n], f"{self.path}: {n}") for n in names]
        raise RegionclipError(
            f"{self.path}: expected a COCO annotation file, a {{file: boxes}} object or JSON Lines"
        )

    def _read_coco(self, data: dict) -> tuple[list[str], list[ImageEntry]]:
        coco = read_coco(data, f"{self.option} {self.path}", need_categories=False)
        boxes = coco.boxes_by_image()
        names = [img["file_name"] for img in coco.images]
        entries = [ImageEntry(_boxes_tensor(boxes[img["id"]], str(self.path)), img["id"],
                              img.get("width"), img.get("height")) for img in coco.images]
        return names, entries

    def _read_jsonl(self, text: str) -> tuple[list[str], list[ImageEntry]]:
        names, entries = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            origin = f"{self.path}:{number}"
            try:
                row = json.loads(line)
                name = row["file"]
                raw = row["boxes"] if "boxes" in row else [d["box"] for d in row["detections"]]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise RegionclipError(
                    f"{origin}: expected a JSON line with 'file' and 'boxes' (or 'detections')"
                ) from None
            names.append(str(name))
            entries.append(_entry_from(raw, origin))
        return names, entries

    def entry_for(self, image_path: Path) -> ImageEntry:
        hits = self.index.candidates(image_path)
        if len(hits) != 1:
            several = f" (it matches {len(hits)} entries)" if hits else ""
            raise InputError(f"{image_path}: no boxes for this image in {self.path}{several}")
        return self._entries[hits[0]]


def _entry_from(raw, origin: str) -> ImageEntry:
    return ImageEntry(_boxes_tensor(raw, origin))


@dataclass
class Proposals:
    """An image's regions (original pixels), its id in a COCO box file, and skipped-box lines."""

    boxes: torch.Tensor
    image_id: int | None
    problems: list[str]
    objectness: torch.Tensor | None = None  # RPN proposals: each box's sigmoid objectness


# Past this many proposals per image the work is not worth it and memory is at risk: each
# proposal costs a layer4 pass (~2.3 GFLOPs on RN50) and scoring holds proposals x classes
# probabilities (200,000 x 1,203 LVIS classes is 1 GB). The paper uses 300 (RPN: 1,000).
MAX_PROPOSALS = 10_000


PROPOSAL_SOURCES = ("random", "file", "rpn")
ZERO_SHOT_RPN_NMS = 0.9
ZERO_SHOT_RPN_PROPOSALS = 1000


@dataclass(frozen=True)
class ProposalConfig:
    """Where regions come from: "random" boxes, a box "file" or an "rpn"; `max_boxes` caps a
    file's boxes. An RPN keeps its `rpn_proposals` best boxes after NMS at `rpn_nms` (the
    original's zero-shot settings by default; pseudo labels use pretraining's)."""

    source: str = "random"
    file: Path | None = None
    random: RandomBoxConfig = field(default_factory=RandomBoxConfig)
    max_boxes: int | None = None
    rpn: Path | None = None  # source "rpn": a checkpoint written by `regionclip rpn`
    rpn_nms: float = ZERO_SHOT_RPN_NMS
    rpn_proposals: int = ZERO_SHOT_RPN_PROPOSALS

    def __post_init__(self) -> None:
        if self.source not in PROPOSAL_SOURCES:
            raise RegionclipError(f"proposals: unknown source {self.source!r}; use {', '.join(PROPOSAL_SOURCES)}")
        if self.source == "file" and self.file is None:
            raise RegionclipError("proposals: source 'file' needs a box file (--boxes FILE)")
        if self.source == "rpn" and self.rpn is None:
            raise RegionclipError("proposals: source 'rpn' needs an RPN checkpoint (--rpn FILE, from `regionclip rpn`)")
        if self.random.count > MAX_PROPOSALS:
            raise RegionclipError(
                f"--num-proposals {self.random.count}: at most {MAX_PROPOSALS:,} per image; each proposal "
                "costs a layer4 pass and scoring holds proposals x classes probabilities, so more would "
                "run for hours or exhaust memory (the paper uses 300)")

    def describe(self) -> str:
        if self.source == "file":
            return f"file:{Path(self.file).resolve()}"
        if self.source == "rpn":
            return f"rpn:{Path(self.rpn).resolve()}@nms{self.rpn_nms},{self.rpn_proposals}"
        r = self.random
        return f"random:{r.count}@grid{r.grid},min{r.min_size},seed{r.seed}"


class ProposalSource:
    """Each image's regions: a box file's (sanitised), else random boxes.

    `max_boxes` caps a file's boxes per image with a sample that depends only on the seed and the
    file name, so reruns propose the same regions. New sources (an RPN) add a `source` name and a
    branch in `for_image`; the region pipeline asks nothing else of them.
    """

    def __init__(self, config: ProposalConfig):
        self.config = config
        self.box_file = BoxFile(config.file) if config.source == "file" else None
        self.rpn = None
        if config.source == "rpn":
            from regionclip_cli.modeling.rpn import load_proposal_network

            self.rpn = load_proposal_network(config.rpn, option="--rpn")
            self.rpn.set_test_limits(config.rpn_nms, config.rpn_proposals)

    @property
    def needs_pixels(self) -> bool:
        """An RPN looks at the image: call `for_pixels` instead of `for_image`."""
        return self.rpn is not None

    def for_pixels(self, image: torch.Tensor, scale: float) -> Proposals:
        """RPN proposals (no box regression; NMS and count from the config) for a raw RGB
        [3, h, w] image in [0, 1] at input size; `scale` maps original to input pixels. The boxes
        come back in original pixels with their objectness."""
        network = self.rpn.to(image.device)
        with torch.inference_mode():
            found = network([image])[0]
        return Proposals(found["boxes"].cpu() / scale, None, [], found["scores"].cpu())

    @property
    def is_random(self) -> bool:
        return self.config.source == "random"

    def check(self, paths: list[Path]) -> None:
        """Problems that can be known before any image is read (ambiguous file names)."""
        if self.box_file is not None:
            self.box_file.index.check_unambiguous(paths, f"--boxes {self.box_file.path}")

    def for_image(self, path: Path, width: int, height: int) -> Proposals:
        config = self.config
        if self.box_file is None:
            return Proposals(random_boxes(width, height, config.random, key=path.name), None, [])
        entry = self.box_file.entry_for(path)
        boxes, problems = sanitize_boxes(entry.boxes, width, height, str(path))
        if config.max_boxes is not None and len(boxes) > config.max_boxes:
            order = torch.randperm(len(boxes), generator=_generator_for(path.name, config.random.seed))
            boxes = boxes[order[: config.max_boxes]]
        return Proposals(boxes, entry.image_id, problems)


