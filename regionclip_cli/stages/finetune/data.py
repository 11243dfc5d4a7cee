"""Box-annotated images for the RPN and the detector: read, checked, split, batched.

One reader for any COCO-format file + image folder (COCO 48/17, LVIS v1, the synthetic world,
your own): each image's boxes as [x1, y1, x2, y2] in original pixels with vocabulary indices.

- Categories the vocabulary does not list are dropped (COCO's 80 → the 65 of the 48/17 split);
  an annotation whose category id is not even in the file's own categories is an error.
- Boxes are clipped to the image; boxes with no area left are dropped and counted.
- Training keeps only categories of `train_splits` and drops images left without a box
  (detectron2's FILTER_EMPTY_ANNOTATIONS): in the open-vocabulary splits those images hold only
  novel objects, and training on them as all background would teach that novel objects are background.
- A listed image file that does not exist is an error before any work starts.

Batches are pure functions of the iteration (`sample_generator`, `global_batch_indices`): exact
resume, and N processes equal one. LVIS's repeat-factor sampling repeats an image
max(1, sqrt(t / f)) times per epoch for its rarest category of frequency f (fraction of images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.data.captions import global_batch_indices, sample_generator
from regionclip_cli.data.vocab import Vocabulary


@dataclass(frozen=True)
class DatasetConfig:
    """A COCO-format annotation file and the folder its `file_name`s are relative to."""

    annotations: Path
    images: Path


@dataclass(frozen=True)
class DetectionDataConfig:
    """Training (and held-out) images, the vocabulary with its splits, and input sizes.

    `min_sizes`: the short side is drawn from these per training image (detectron2's multi-scale
    "choice"); the original's COCO/LVIS finetuning uses 640..800, tests at 800/1333, bilinear.
    """

    train: DatasetConfig
    test: Optional[DatasetConfig] = None
    vocabulary: str = "world"  # built-in name, a names file, or 'annotations' (the file's categories)
    train_splits: list[str] = field(default_factory=lambda: ["base"])  # LVIS: [c, f]; []: every class
    min_sizes: list[int] = field(default_factory=lambda: [640, 672, 704, 736, 768, 800])
    max_size: int = 1333
    test_min_size: int = 800
    test_max_size: int = 1333
    hflip: bool = True
    repeat_factor_threshold: Optional[float] = None  # LVIS: 0.001
    loader_workers: int = 2

    def __post_init__(self) -> None:
        if not self.min_sizes or min(self.min_sizes) < 16 or self.max_size < max(self.min_sizes):
            raise ValueError("need min_sizes >= 16 and max_size >= every min_size")
        if self.test_max_size < self.test_min_size:
            raise ValueError("test_max_size must be >= test_min_size")


@dataclass
class AnnotatedImage:
    path: Path
    image_id: int
    width: int
    height: int
    boxes: torch.Tensor  # [G, 4] x1y1x2y2, original pixels
    labels: torch.Tensor  # [G] indices into the vocabulary the set was read with


@dataclass
class AnnotatedSet:
    images: list[AnnotatedImage]
    vocabulary: Vocabulary
    notes: list[str]


def dataset_vocabulary(spec: str, annotations: Path, where: str) -> Vocabulary:
    """`data.vocabulary`: a vocabulary by name/file, or 'annotations' — the file's own categories
    (their optional "split" tags, e.g. base/novel, become the vocabulary's splits)."""
    from regionclip_cli.data.coco import read_coco
    from regionclip_cli.data.vocab import load_vocabulary

    if spec != "annotations":
        return load_vocabulary(spec)
    categories = read_coco(annotations, where).categories
    names = tuple(str(c.get("name", c["id"])) for c in categories)
    ids = tuple(int(c["id"]) for c in categories)
    tags = {str(c["split"]) for c in categories if c.get("split")}
    splits = {tag: tuple(int(c["id"]) for c in categories if c.get("split") == tag) for tag in tags}
    return Vocabulary(annotations.stem, names, ids, splits=splits)


def annotation_data(path: Path, where: str) -> dict:
    """The parsed annotation file; LVIS images, which carry a `coco_url` but no `file_name`, get
    the URL's last two parts ("train2017/000000391895.jpg": LVIS v1 val draws on both COCO
    folders), so `images` is the COCO root."""
    from regionclip_cli.data.coco import read_json

    data = read_json(path, f"{where}.annotations {path}")
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        for image in data["images"]:
            if isinstance(image, dict) and "file_name" not in image and isinstance(image.get("coco_url"), str):
                image["file_name"] = "/".join(image["coco_url"].split("/")[-2:])
    return data


def read_annotated_set(dataset: DatasetConfig, vocabulary: Vocabulary, *, where: str,
                       keep_categories: Sequence[int] | None = None, drop_empty: bool) -> AnnotatedSet:
    """The images of `dataset` with their boxes of the vocabulary's (or `keep_categories`') classes."""
    from regionclip_cli.data.coco import read_coco

    from regionclip_cli.evaluation import check_vocabulary

    label = f"{where}.annotations {dataset.annotations}"
    coco = read_coco(annotation_data(dataset.annotations, where), label)
    check_vocabulary(vocabulary, coco.data, where=label)  # names at the same id, before any training
    file_categories = {int(c["id"]) for c in coco.categories}
    index_of = {cid: i for i, cid in enumerate(vocabulary.category_ids)}
    keep = set(keep_categories) if keep_categories is not None else set(vocabulary.category_ids)
    if not keep & file_categories:
        raise RegionclipError(f"{where}.annotations {dataset.annotations}: none of its category ids is in the "
                              f"vocabulary '{vocabulary.name}' (is it the right vocabulary?)")
    per_image: dict[int, list[tuple[list[float], int]]] = {int(img["id"]): [] for img in coco.images}
    dropped_other = 0
    for number, ann in enumerate(coco.annotations):
        category = ann["category_id"]
        if category not in file_categories:
            raise RegionclipError(f"{where}.annotations {dataset.annotations}: annotations[{number}] has category "
                                  f"id {category}, which is not in the file's categories")
        if ann["iscrowd"] or category not in keep or category not in index_of:
            dropped_other += 1
            continue
        x, y, w, h = ann["bbox"]
        per_image[ann["image_id"]].append(([x, y, x + w, y + h], index_of[category]))
    images, missing, degenerate, empty = [], [], 0, 0
    for img in coco.images:
        path = dataset.images / img["file_name"]
        if not path.is_file():
            missing.append(path)
            continue
        width, height = img.get("width"), img.get("height")
        if not width or not height:
            with Image.open(path) as opened:
                width, height = opened.size
        rows = per_image[int(img["id"])]
        boxes = torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([r[1] for r in rows], dtype=torch.long)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        usable = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
        degenerate += int((~usable).sum())
        boxes, labels = boxes[usable], labels[usable]
        if drop_empty and len(boxes) == 0:
            empty += 1
            continue
        images.append(AnnotatedImage(path, int(img["id"]), int(width), int(height), boxes, labels))
    if missing:
        raise RegionclipError(f"{where}.images {dataset.images}: {len(missing)} of {len(coco.images)} images listed in "
                              f"{dataset.annotations} do not exist, e.g. {missing[0]}")
    notes = []
    if degenerate:
        notes.append(f"{where}: {degenerate} boxes with no area inside their image were skipped")
    if empty:
        notes.append(f"{where}: {empty} images without a box of the training classes were left out "
                     "(as detectron2's FILTER_EMPTY_ANNOTATIONS)")
    if not images:
        raise RegionclipError(f"{where}.annotations {dataset.annotations}: no usable image with boxes "
                              f"of the training classes")
    return AnnotatedSet(images, vocabulary, notes)


def repeat_factors(images: Sequence[AnnotatedImage], threshold: float) -> list[float]:
    """LVIS repeat factors: r(c) = max(1, sqrt(t / f(c))), an image's is its categories' maximum."""
    counts: dict[int, int] = {}
    for image in images:
        for label in set(image.labels.tolist()):
            counts[label] = counts.get(label, 0) + 1
    total = len(images)
    per_category = {c: max(1.0, math.sqrt(threshold / (n / total))) for c, n in counts.items()}
    return [max((per_category[c] for c in set(image.labels.tolist())), default=1.0) for image in images]


def expanded_order(factors: Sequence[float], seed: int) -> list[int]:
    """Indices repeated by their factors, the fractional part drawn once per run (detectron2 draws
    it anew each epoch; a fixed draw keeps `global_batch_indices` a pure function of the step)."""
    generator = torch.Generator().manual_seed(seed * 7919 + 17)
    draws = torch.rand(len(factors), generator=generator).tolist()
    order = []
    for index, (factor, draw) in enumerate(zip(factors, draws)):
        order.extend([index] * (int(factor) + (1 if draw < factor - int(factor) else 0)))
    return order


@dataclass
class DetectionBatch:
    """`image_seeds` seed the detector's region and the RPN's anchor sampling, one per image, from
    its global-batch position: the draws do not depend on how the batch is split over processes."""

    images: list[torch.Tensor]  # raw RGB [3, h, w] in [0, 1], resized
    targets: list[dict[str, torch.Tensor]]  # boxes in input pixels, labels
    image_seeds: list[int]


class TrainingBatches:
    """This process's share of the global batch at an iteration: decode, flip, resize."""

    def __init__(self, annotated: AnnotatedSet, config: DetectionDataConfig, *, batch_size: int, seed: int,
                 positions: range):
        from concurrent.futures import ThreadPoolExecutor

        self.images = annotated.images
        self.config = config
        self.batch_size, self.seed, self.positions = batch_size, seed, positions
        self.order = list(range(len(self.images)))
        if config.repeat_factor_threshold is not None:
            self.order = expanded_order(repeat_factors(self.images, config.repeat_factor_threshold), seed)
        workers = config.loader_workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="regionclip-detdata") if workers > 0 else None

    def _sample(self, iteration: int, position: int, index: int):
        from regionclip_cli.data.images import ResizeConfig, load_image, resize_for_model, to_model_tensor

        item = self.images[index]
        generator = sample_generator(self.seed, iteration, position)
        picture = load_image(item.path)
        boxes = item.boxes.clone()
        if self.config.hflip and bool(torch.rand((), generator=generator) < 0.5):
            picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            boxes = torch.stack([item.width - boxes[:, 2], boxes[:, 1], item.width - boxes[:, 0], boxes[:, 3]], dim=1)
        sizes = self.config.min_sizes
        short = sizes[int(torch.randint(len(sizes), (), generator=generator))]
        resized, scale = resize_for_model(picture, ResizeConfig(short, self.config.max_size, "bilinear"))
        tensor = to_model_tensor(resized, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        return tensor, {"boxes": boxes * scale, "labels": item.labels.clone()}

    def __call__(self, iteration: int) -> DetectionBatch:
        picks = global_batch_indices(len(self.order), self.batch_size, iteration, self.seed)
        jobs = [(iteration, position, self.order[picks[position]]) for position in self.positions]
        if self._pool is None:
            samples = [self._sample(*job) for job in jobs]
        else:
            samples = list(self._pool.map(lambda job: self._sample(*job), jobs))
        seeds = [sample_generator(self.seed, iteration, position, stream="sampling").initial_seed()
                 for position in self.positions]
        return DetectionBatch([s[0] for s in samples], [s[1] for s in samples], seeds)


def held_out_input(item: AnnotatedImage, min_size: int, max_size: int) -> tuple[torch.Tensor, float]:
    """A held-out image as the detector sees it at test: bilinear resize, raw RGB, and its scale."""
    from regionclip_cli.data.images import ResizeConfig, load_image, resize_for_model, to_model_tensor

    resized, scale = resize_for_model(load_image(item.path), ResizeConfig(min_size, max_size, "bilinear"))
    return to_model_tensor(resized, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), scale
