"""COCO annotation files, read in one place: checked, normalised, and indexed by file name.

Box files (`--boxes ann.json`), ground truth (`--gt ann.json`) and evaluation all read the same
format, and each used to parse it its own way, so the same malformed file could give a clean line
in one command and a traceback in another. `read_coco` gives every caller the same checked copy:
ids are ints, every annotation has a unique id, `bbox` [x, y, w, h] floats, `iscrowd` and `area`
(pycocotools reads both unconditionally), and every image has a `file_name`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from regionclip_cli.core.errors import RegionclipError

COCO_KEYS = ("images", "annotations", "categories")


def is_coco(data: object) -> bool:
    """A COCO annotation object: a dict with 'images' and 'annotations' lists."""
    return isinstance(data, Mapping) and isinstance(data.get("images"), list) and isinstance(
        data.get("annotations"), list)


def read_json(path: str | os.PathLike, where: str) -> Any:
    """Parse a JSON file, or one line naming `where` and what is wrong."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegionclipError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RegionclipError(f"{where}: cannot read the file ({error})") from None
    except json.JSONDecodeError as error:
        raise RegionclipError(f"{where}: not valid JSON (line {error.lineno}: {error.msg})") from None


@dataclass
class CocoFile:
    """A checked COCO annotation file; `data` is the normalised dict pycocotools can take."""

    where: str
    data: dict

    @property
    def images(self) -> list[dict]:
        return self.data["images"]

    @property
    def annotations(self) -> list[dict]:
        return self.data["annotations"]

    @property
    def categories(self) -> list[dict]:
        return self.data["categories"]

    def boxes_by_image(self) -> dict[int, list[list[float]]]:
        """[x1, y1, x2, y2] boxes of the non-crowd annotations, per image id (every image listed)."""
        boxes: dict[int, list[list[float]]] = {int(img["id"]): [] for img in self.images}
        for ann in self.annotations:
            if not ann["iscrowd"]:
                x, y, w, h = ann["bbox"]
                boxes[ann["image_id"]].append([x, y, x + w, y + h])
        return boxes


def read_coco(source: str | os.PathLike | Mapping, where: str | None = None, *,
              need_categories: bool = True, need_file_names: bool = True) -> CocoFile:
    """Read and check a COCO annotation file (a path, or an already parsed dict, never modified).

    `where` names the file in errors (e.g. "--gt ann.json"). `need_categories=False` accepts files
    without a categories list (box files); their boxes then need no category either.
    `need_file_names=False` is for evaluation alone, which matches by image id: LVIS v1 files
    name their images by `coco_url`, without a `file_name`.
    """
    if isinstance(source, Mapping):
        data, where = source, where or "ground truth"
    else:
        where = where or str(source)
        data = read_json(source, where)
    required = COCO_KEYS if need_categories else COCO_KEYS[:2]
    if not isinstance(data, Mapping):
        raise RegionclipError(f"{where}: expected a COCO annotation object with {', '.join(required)}")
    for key in required:
        if not isinstance(data.get(key), list):
            raise RegionclipError(f"{where}: missing the '{key}' list of a COCO annotation file")
    images = _images(data["images"], where, need_file_names)
    known = {img["id"] for img in images}
    categories = _categories(data.get("categories") or [], where)
    annotations = _annotations(data["annotations"], where, known, need_categories)
    return CocoFile(where, {**data, "images": images, "categories": categories, "annotations": annotations})


def _images(raw: list, where: str, need_file_names: bool = True) -> list[dict]:
    images, seen = [], set()
    for number, img in enumerate(raw):
        try:
            image_id = int(img["id"])
            file_name = img["file_name"] if need_file_names or "file_name" in img else None
        except (KeyError, TypeError, ValueError) as error:
            missing = "'id'" if not (isinstance(img, Mapping) and "id" in img) else "'file_name'"
            raise RegionclipError(
                f"{where}: images[{number}] has no usable {missing} ({type(error).__name__}); "
                "every image needs an integer 'id' and a 'file_name'") from None
        if image_id in seen:
            raise RegionclipError(f"{where}: images[{number}]: image id {image_id} appears twice")
        seen.add(image_id)
        images.append({**img, "id": image_id} if file_name is None else
                      {**img, "id": image_id, "file_name": str(file_name)})
    return images


def _categories(raw: list, where: str) -> list[dict]:
    try:
        return [{**cat, "id": int(cat["id"])} for cat in raw]
    except (KeyError, TypeError, ValueError) as error:
        raise RegionclipError(f"{where}: a category has no integer 'id' ({type(error).__name__})") from None


def _annotations(raw: list, where: str, known: set[int], need_categories: bool) -> list[dict]:
    annotations = []
    for number, ann in enumerate(raw):
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
            row = {**ann, "id": number + 1, "image_id": int(ann["image_id"]), "bbox": [x, y, w, h],
                   "iscrowd": int(ann.get("iscrowd", 0)),
                   "area": float(ann["area"]) if "area" in ann else w * h}
            if need_categories or "category_id" in ann:
                row["category_id"] = int(ann["category_id"])
        except (KeyError, TypeError, ValueError) as error:
            needs = "'image_id', 'category_id' and 'bbox' [x, y, w, h]" if need_categories else \
                "'image_id' and 'bbox' [x, y, w, h]"
            raise RegionclipError(
                f"{where}: annotations[{number}] is malformed ({type(error).__name__}: {error}); "
                f"annotations need {needs}") from None
        if row["image_id"] not in known:
            raise RegionclipError(
                f"{where}: annotations[{number}] refers to image id {row['image_id']}, which is not in 'images'")
        annotations.append(row)
    return annotations
