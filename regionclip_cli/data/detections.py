"""Writing detections: COCO results JSON, one JSON line per image, pictures, region features.

The JSON Lines file grows as images finish, under a temporary name, and is renamed into place when
the run ends, so an interrupted run never leaves a file that looks complete. The COCO results
file is written once at the end (it is one JSON array). Region features go to one `.npz` per
image (`boxes`, `features`), never a pickle.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from regionclip_cli.core.atomic import atomic_path, write_json, write_text


@dataclass
class ImageDetections:
    """One image's results in plain Python values, boxes in original-image pixels."""

    file: Path
    width: int
    height: int
    image_id: int
    detections: list[dict]  # {"box": [x1,y1,x2,y2], "label", "category_id", "score"}


def coco_results(result: ImageDetections) -> list[dict]:
    """COCO results entries ([x, y, w, h] boxes), loadable by pycocotools `loadRes`."""
    rows = []
    for det in result.detections:
        x1, y1, x2, y2 = det["box"]
        rows.append({
            "image_id": result.image_id,
            "category_id": det["category_id"],
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(det["score"], 5),
        })
    return rows


def _safe_stem(path: Path, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem) or "image"
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


class DetectionWriter:
    """Collects per-image results into `out_dir` (detections.jsonl, detections_coco.json, ...).

    `resume=True` carries on an interrupted run's `.detections.jsonl.partial` (its rows are kept
    and appended to); otherwise a new partial file is started.
    """

    PARTIAL_NAME = ".detections.jsonl.partial"

    def __init__(self, out_dir: str | os.PathLike, *, save_pictures: bool = False,
                 save_features: bool = False, resume: bool = False):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.out_dir / "detections.jsonl"
        self.coco_path = self.out_dir / "detections_coco.json"
        self.pictures_dir = self.out_dir / "pictures" if save_pictures else None
        self.features_dir = self.out_dir / "features" if save_features else None
        self.partial_path = self.out_dir / self.PARTIAL_NAME
        self.rows: list[dict] = read_rows(self.partial_path) if resume and self.partial_path.is_file() else []
        self._coco: list[dict] = []
        self._stems: set[str] = set()
        for row in self.rows:
            self._coco.extend(coco_results(ImageDetections(Path(row["file"]), row["width"], row["height"],
                                                           row["image_id"], row["detections"])))
            _safe_stem(Path(row["file"]), self._stems)
        if self.rows:  # drop a line cut off mid-write, then append after the complete ones
            write_text(self.partial_path, "".join(json.dumps(row) + "\n" for row in self.rows))
        self._jsonl = self.partial_path.open("a" if self.rows else "w", encoding="utf-8")

    def add(self, result: ImageDetections, *, picture: Image.Image | None = None,
            boxes: np.ndarray | None = None, features: np.ndarray | None = None,
            extra: dict | None = None) -> None:
        row = {"file": str(result.file), "width": result.width, "height": result.height,
               "image_id": result.image_id, "detections": result.detections, **(extra or {})}
        # Names are unique per run (x.jpg, x_2.jpg for two x.png); the row names its files so each
        # picture and feature file maps to its line. Files first: a row never names a missing one.
        stem = _safe_stem(result.file, self._stems) if (self.pictures_dir or self.features_dir) else ""
        if self.pictures_dir is not None and picture is not None:
            from regionclip_cli.data.pictures import save_picture

            save_picture(picture, self.pictures_dir / f"{stem}.jpg")
            row["picture"] = f"{self.pictures_dir.name}/{stem}.jpg"
        if self.features_dir is not None and features is not None:
            self.features_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.features_dir / f"{stem}.npz") as tmp:
                with tmp.open("wb") as handle:
                    np.savez(handle, boxes=boxes.astype(np.float32), features=features.astype(np.float32))
            row["features"] = f"{self.features_dir.name}/{stem}.npz"
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        self.rows.append(row)
        self._coco.extend(coco_results(result))

    @property
    def coco_detections(self) -> list[dict]:
        return self._coco

    def close(self, complete: bool = True) -> None:
        """Finish the files of a complete run; an incomplete one keeps only its partial JSONL."""
        self._jsonl.close()
        if complete:
            os.replace(self.partial_path, self.jsonl_path)
            write_json(self.coco_path, self._coco)


def read_rows(path: Path) -> list[dict]:
    """The complete lines of a (possibly interrupted) detections JSONL; a cut-off last line is dropped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
