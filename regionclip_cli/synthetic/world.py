"""A whole synthetic world: N images with COCO box annotations and captions, on disk or in memory.

Image i of world `seed` depends only on (seed, i), so worlds with different seeds are disjoint
sample sets (the teacher trains on one seed, evaluation uses others) and generation can be spread
over processes in any order. Files on disk:

- `images/000000.png ...` (index i, 0-based, six digits)
- `annotations.json`: COCO detection format; image ids are i + 1; categories carry two extra keys,
  `synonyms` and `split` ("base" / "novel"); boxes are `[x, y, w, h]` at this file boundary only.
- `captions.jsonl`: one line per image, `{"file": "images/000000.png", "image_id": 1, "captions": [...]}`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image

from regionclip_cli.core.atomic import atomic_path, write_json, write_text
from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.core.progress import progress_bar
from regionclip_cli.synthetic.captions import caption_rng, write_captions
from regionclip_cli.synthetic.categories import WORLD_CATEGORIES
from regionclip_cli.synthetic.render import MAX_OBJECT_FRACTION, MIN_OBJECT_SIZE, WorldObject, render_scene


@dataclass(frozen=True)
class WorldConfig:
    num_images: int = 200
    image_size: int = 224
    seed: int = 0
    min_captions: int = 3
    max_captions: int = 5
    min_objects: int = 1
    max_objects: int = 6
    min_object_size: float = MIN_OBJECT_SIZE  # pixels, longest box side; the largest is half the image
    workers: int = 0  # processes for `generate_world`; 0 = one per CPU core

    def check(self) -> None:
        """Reject impossible settings before any work starts, naming the option."""
        if self.num_images < 1:
            raise RegionclipError(f"--images must be at least 1 (got {self.num_images})")
        if self.image_size < 64:
            raise RegionclipError(f"--image-size must be at least 64 pixels (got {self.image_size})")
        if not 1 <= self.min_captions <= self.max_captions:
            raise RegionclipError(
                f"captions per image: need 1 <= min ({self.min_captions}) <= max ({self.max_captions})")
        if not 1 <= self.min_objects <= self.max_objects:
            raise RegionclipError(
                f"objects per image: need 1 <= min ({self.min_objects}) <= max ({self.max_objects})")
        if not 4 <= self.min_object_size <= MAX_OBJECT_FRACTION * self.image_size:
            raise RegionclipError(
                f"--min-object-size must be between 4 and half the image size "
                f"({MAX_OBJECT_FRACTION * self.image_size:g} pixels; got {self.min_object_size:g})")


@dataclass(frozen=True)
class WorldImage:
    index: int
    image_id: int
    image: Image.Image
    objects: tuple[WorldObject, ...]
    captions: list[str]

    @property
    def file_name(self) -> str:
        return f"{self.index:06d}.png"


@dataclass(frozen=True)
class WorldSummary:
    out_dir: Path
    num_images: int
    num_objects: int
    num_captions: int
    num_base_categories: int
    num_novel_categories: int
    seconds: float


def world_image(config: WorldConfig, index: int) -> WorldImage:
    """Image `index` of the world: pixels, objects and captions, all from (seed, index)."""
    scene = render_scene(config.seed, index, config.image_size, config.min_objects, config.max_objects,
                         config.min_object_size)
    rng = caption_rng(config.seed, index)
    count = rng.randint(config.min_captions, config.max_captions)
    captions = write_captions(scene.objects, scene.background, config.image_size, count, rng)
    return WorldImage(index, index + 1, scene.image, scene.objects, captions)


def iter_world(config: WorldConfig, start: int = 0) -> Iterator[WorldImage]:
    """The world's images in order, rendered on demand (training without touching disk)."""
    config.check()
    for index in range(start, config.num_images):
        yield world_image(config, index)


def _write_image(args: tuple[WorldConfig, int, str]) -> tuple[int, tuple[WorldObject, ...], list[str]]:
    config, index, images_dir = args
    item = world_image(config, index)
    with atomic_path(Path(images_dir) / item.file_name) as tmp:
        item.image.save(tmp, format="PNG", compress_level=1)
    return index, item.objects, item.captions


def coco_annotations(config: WorldConfig, items: list[tuple[int, tuple[WorldObject, ...], list[str]]]) -> dict:
    images, annotations = [], []
    for index, objects, _ in items:
        images.append({"id": index + 1, "file_name": f"{index:06d}.png",
                       "width": config.image_size, "height": config.image_size})
        for obj in objects:
            x1, y1, x2, y2 = obj.box
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1, "category_id": obj.category_id,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                "colour": obj.colour,
            })
    categories = [{"id": c.id, "name": c.name, "supercategory": "shape", "synonyms": list(c.synonyms),
                   "split": c.split} for c in WORLD_CATEGORIES]
    info = {"description": "regionclip synthetic world", "seed": config.seed, "image_size": config.image_size,
            "min_object_size": config.min_object_size}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


WORLD_IMAGE_NAME = re.compile(r"\d{6}\.png")


def _clear_world(out: Path, overwrite: bool) -> None:
    """Make `out` ready for a new world: refuse a non-empty folder, or with `overwrite` remove the
    files an earlier world wrote there, so no old image can sit beside the new annotations.

    Files `generate` did not write (other names in images/) are never deleted: they stop the run.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise RegionclipError(f"{out} is a file, not a folder; choose a folder for the world")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not overwrite:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise RegionclipError(f"{out} is not empty ({shown}); pass --overwrite to replace the world in it, "
                              f"or choose a new folder")
    images_dir = out / "images"
    if images_dir.is_dir():
        foreign = sorted(p.name for p in images_dir.iterdir() if not WORLD_IMAGE_NAME.fullmatch(p.name))
        if foreign:
            raise RegionclipError(f"{images_dir} holds files a world does not write ({', '.join(foreign[:3])}); "
                                  f"--overwrite only replaces a world: move them, or choose a new folder")
        shutil.rmtree(images_dir)
    for name in ("annotations.json", "captions.jsonl"):
        (out / name).unlink(missing_ok=True)


def generate_world(out_dir: str | os.PathLike, config: WorldConfig, progress: bool = True,
                   overwrite: bool = False) -> WorldSummary:
    """Write the world's images, annotations.json and captions.jsonl under `out_dir`.

    A non-empty `out_dir` is refused unless `overwrite`, which replaces an earlier world there.
    """
    config.check()
    start = time.perf_counter()
    out = Path(out_dir)
    _clear_world(out, overwrite)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    workers = config.workers or os.cpu_count() or 1
    jobs = [(config, i, str(images_dir)) for i in range(config.num_images)]

    items = []
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(jobs) >= 64 else None
    try:
        results = pool.map(_write_image, jobs, chunksize=32) if pool else map(_write_image, jobs)
        with progress_bar(disable=not progress) as bar:
            task = bar.add_task("rendering", total=len(jobs), unit="img", status="")
            for item in results:
                items.append(item)
                bar.advance(task)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    write_json(out / "annotations.json", coco_annotations(config, items))
    lines = [json.dumps({"file": f"images/{i:06d}.png", "image_id": i + 1, "captions": caps})
             for i, _, caps in items]
    write_text(out / "captions.jsonl", "\n".join(lines) + "\n")
    return WorldSummary(
        out_dir=out,
        num_images=len(items),
        num_objects=sum(len(objects) for _, objects, _ in items),
        num_captions=sum(len(caps) for _, _, caps in items),
        num_base_categories=sum(c.split == "base" for c in WORLD_CATEGORIES),
        num_novel_categories=sum(c.split == "novel" for c in WORLD_CATEGORIES),
        seconds=time.perf_counter() - start,
    )
