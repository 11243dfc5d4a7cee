"""A zeroshot output folder that always belongs to one run.

`settings.json` records what produced the folder (model, weights and their sha256, vocabulary,
templates, proposals, thresholds, sizes, images, version). A rerun with the same settings
resumes an interrupted run (or redoes a finished one from scratch); other settings are refused
with a line naming `--overwrite`, which removes the old run's files first, so detections and
pictures of two runs never sit side by side.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from regionclip_cli.core.atomic import write_json
from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.data.detections import DetectionWriter, ImageDetections

if TYPE_CHECKING:
    from regionclip_cli.stages.zeroshot.stage import ImageResult, ZeroShotConfig, ZeroShotResult

SETTINGS_FILE = "settings.json"
# Every file or folder a zeroshot run writes: exactly these are removed by --overwrite.
OUTPUT_FILES = ("detections.jsonl", "detections_coco.json", "metrics.json", SETTINGS_FILE,
                DetectionWriter.PARTIAL_NAME)
OUTPUT_FOLDERS = ("pictures", "features")


def _digest(items: list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode("utf-8")).hexdigest()[:16]


def run_settings(config: ZeroShotConfig, vocabulary, templates: list[str], paths: list) -> dict:
    """What changes the outputs, as plain JSON (checked before the model is loaded)."""
    from regionclip_cli import __version__
    from regionclip_cli.modeling.clip import file_sha256

    def file_entry(path):
        return None if path is None else {"path": str(Path(path).resolve()), "sha256": file_sha256(Path(path))}

    det = config.detection
    return {
        "version": __version__,
        "model": config.model, "pretrained": config.pretrained, "weights": file_entry(config.weights),
        "vocabulary": {"name": vocabulary.name, "size": len(vocabulary),
                       "names": _digest(list(vocabulary.names)),
                       "category_ids": _digest([str(c) for c in vocabulary.category_ids])},
        "templates": _digest(templates), "class_embeddings": file_entry(config.class_embeddings),
        "proposals": config.proposals.describe(),
        "boxes": file_entry(config.proposals.file),
        "score_threshold": det.score_threshold, "nms": det.nms_threshold,
        "max_detections": det.max_detections, "temperature": det.temperature,
        "min_size": config.min_size, "max_size": config.max_size, "batch_size": config.batch_size,
        "pictures": config.save_vis, "vis_threshold": config.vis_threshold if config.save_vis else None,
        "features": config.save_features,
        "images": {"count": len(paths), "digest": _digest([str(p) for p in paths])},
        "gt": file_entry(config.gt),
    }


class OutputFolder:
    def __init__(self, path: Path, settings: dict, *, overwrite: bool, pictures: bool, features: bool):
        self.path = path
        self.settings = settings
        saved_path = path / SETTINGS_FILE
        saved = json.loads(saved_path.read_text(encoding="utf-8")) if saved_path.is_file() else None
        # A run that stopped before its first image (a bad option, a failed download) leaves only
        # settings.json: that does not make the folder another run's.
        leftovers = [name for name in OUTPUT_FILES + OUTPUT_FOLDERS
                     if name != SETTINGS_FILE and (path / name).exists()]
        self.resume = False
        if saved is not None and saved == settings:
            self.resume = (path / DetectionWriter.PARTIAL_NAME).is_file()
            if not self.resume:
                self._clear()  # the same run again: redo it from scratch
        elif leftovers:
            if not overwrite:
                changed = [k for k in settings if (saved or {}).get(k) != settings[k]] if saved else []
                what = f"other settings ({', '.join(changed)})" if changed else "files of another run"
                raise RegionclipError(
                    f"--out {path}: holds zeroshot results made with {what}; use another --out or "
                    "--overwrite to replace them")
            self._clear()
        self.pictures, self.features = pictures, features
        self.writer: DetectionWriter | None = None

    def open(self) -> None:
        """Record the settings and start (or carry on) the detections; called once the model is ready."""
        write_json(self.path / SETTINGS_FILE, self.settings, indent=2)
        self.writer = DetectionWriter(self.path, save_pictures=self.pictures, save_features=self.features,
                                      resume=self.resume)

    def _clear(self) -> None:
        for name in OUTPUT_FILES:
            (self.path / name).unlink(missing_ok=True)
        for name in OUTPUT_FOLDERS:
            shutil.rmtree(self.path / name, ignore_errors=True)

    @property
    def partial_path(self) -> Path:
        return self.writer.partial_path

    @property
    def done_files(self) -> set[str]:
        return {row["file"] for row in self.writer.rows}

    @property
    def used_ids(self) -> set[int]:
        return {int(row["image_id"]) for row in self.writer.rows}

    @property
    def image_ids(self) -> set[int]:
        return self.used_ids

    @property
    def coco_rows(self) -> list[dict]:
        return self.writer.coco_detections

    def add(self, result: ImageResult, item, *, best: bool, picture) -> None:
        extra = None
        if best:  # the best class of every proposal, before thresholds and NMS (region top-1)
            extra = {"best": {"boxes": [[round(v, 2) for v in b] for b in result.boxes.tolist()],
                              "category_ids": result.best_category_ids, "scores": result.best_scores}}
        self.writer.add(
            ImageDetections(result.file, result.width, result.height, result.image_id, result.detections),
            picture=picture, boxes=item.boxes.numpy(), features=item.embeddings.cpu().numpy(), extra=extra)

    def region_records(self) -> list[dict]:
        return [{"file": row["file"], "image_id": row["image_id"], **row["best"]}
                for row in self.writer.rows if "best" in row]

    def close(self, complete: bool) -> None:
        self.writer.close(complete=complete)

    def write_summary(self, result: ZeroShotResult) -> None:
        done = result.images_done + result.resumed
        summary = {
            "images": done, "regions": result.regions, "detections": result.detections,
            "failed_inputs": len(result.failures), "skipped_boxes": len(result.warnings),
            "seconds": round(result.seconds, 3),
            "images_per_second": round(result.images_done / max(result.seconds, 1e-9), 3),
            "resumed_images": result.resumed, "settings": self.settings, "notes": result.notes,
        }
        if result.metrics is not None:
            summary["metrics"] = result.metrics.to_dict()["metrics"]
            summary["evaluation_notes"] = list(result.metrics.notes)
        if result.region_accuracy is not None:
            summary["region_accuracy"] = result.region_accuracy.to_dict()
        write_json(self.path / "metrics.json", summary, indent=2)
