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

from regionclip_cli.core.atomic import atomic_path, write_json


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
    """Collects per-image results into `out_dir` (detections.jsonl, detections_coco.json, ...)."""

    def __init__(self, out_dir: str | os.PathLike, *, save_pictures: bool = False,
                 save_features: bool = False):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.out_dir / "detections.jsonl"
        self.coco_path = self.out_dir / "detections_coco.json"
        self.pictures_dir = self.out_dir / "pictures" if save_pictures else None
        self.features_dir = self.out_dir / "features" if save_features else None
        self._partial = self.out_dir / ".detections.jsonl.partial"
        self._jsonl = self._partial.open("w", encoding="utf-8")
        self._coco: list[dict] = []
        self._stems: set[str] = set()

    def add(self, result: ImageDetections, *, picture: Image.Image | None = None,
            boxes: np.ndarray | None = None, features: np.ndarray | None = None) -> None:
        row = {"file": str(result.file), "width": result.width, "height": result.height,
               "image_id": result.image_id, "detections": result.detections}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        self._coco.extend(coco_results(result))
        stem = _safe_stem(result.file, self._stems) if (self.pictures_dir or self.features_dir) else ""
        if self.pictures_dir is not None and picture is not None:
            from regionclip_cli.data.pictures import save_picture

            save_picture(picture, self.pictures_dir / f"{stem}.jpg")
        if self.features_dir is not None and features is not None:
            self.features_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.features_dir / f"{stem}.npz") as tmp:
                with tmp.open("wb") as handle:
                    np.savez(handle, boxes=boxes.astype(np.float32), features=features.astype(np.float32))

    @property
    def coco_detections(self) -> list[dict]:
        return self._coco

    def close(self) -> None:
        """Finish the files; safe to call once the run is over, successful or not."""
        self._jsonl.close()
        os.replace(self._partial, self.jsonl_path)
        write_json(self.coco_path, self._coco)
