"""`regionclip evaluate` as a library call: detections + ground truth -> metrics (and a JSON file).

Python code calls `run(EvaluateConfig(...))` exactly as the command does. The metrics come from
`regionclip_cli.evaluation`; this stage only resolves the inputs (vocabulary, which images count,
optional region records) and writes the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regionclip_cli import __version__
from regionclip_cli.core.atomic import write_json
from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.data.vocab import BUILTIN_VOCABULARIES, Vocabulary, load_vocabulary
from regionclip_cli.evaluation import EvalResult, evaluate_detections, load_ground_truth, read_detections
from regionclip_cli.evaluation.chance import random_score_levels
from regionclip_cli.evaluation.region_accuracy import RegionAccuracy, region_accuracy


@dataclass(frozen=True)
class EvaluateConfig:
    """What to evaluate; `split` is coco, coco-ovd, lvis, world or None (read from the ground truth)."""

    detections: Path
    gt: Path
    split: str | None = None
    vocab: str | None = None
    regions: Path | None = None  # JSON Lines {"file" | "image_id", "boxes", "category_ids"} (or "best": {...})
    only_detected_images: bool = False
    random_baseline: bool = False
    out: Path | None = None


@dataclass
class EvaluationReport:
    detection: EvalResult
    region: RegionAccuracy | None
    random_levels: dict[str, float] | None
    config: EvaluateConfig

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        report: dict[str, Any] = {
            "regionclip_version": __version__,
            "inputs": {"detections": str(c.detections), "gt": str(c.gt), "split": c.split, "vocab": c.vocab,
                       "regions": None if c.regions is None else str(c.regions),
                       "only_detected_images": c.only_detected_images},
            "detection": self.detection.to_dict(),
        }
        if self.region is not None:
            report["region_accuracy"] = self.region.to_dict()
        if self.random_levels is not None:
            report["random_scores"] = {k: (None if v != v else round(v, 4)) for k, v in self.random_levels.items()}
        return report


def _vocabulary(spec: str | None, ground_truth: dict) -> Vocabulary | None:
    if spec is None:
        return None
    vocabulary = load_vocabulary(spec)
    if spec.strip().lower() not in BUILTIN_VOCABULARIES:
        vocabulary = vocabulary.aligned_to(ground_truth["categories"])  # as zeroshot numbers it
    return vocabulary


def read_region_records(path: Path) -> list[dict]:
    """Region records, one JSON object per line (blank lines skipped); a detections.jsonl line
    that carries the best class of each proposal ("best": {boxes, category_ids}) is one too."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise RegionclipError(f"--regions {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RegionclipError(f"--regions {path}: cannot read it ({error})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise RegionclipError(f"--regions {path}:{number}: not valid JSON ({error.msg})") from None
        if isinstance(record, dict) and isinstance(record.get("best"), dict):
            record = {"file": record.get("file"), "image_id": record.get("image_id"), **record["best"]}
        if (not isinstance(record, dict) or "boxes" not in record or "category_ids" not in record
                or (record.get("file") is None and record.get("image_id") is None)):
            raise RegionclipError(
                f"--regions {path}:{number}: expected an object with 'file' or 'image_id', 'boxes' and "
                "'category_ids' (or a detections.jsonl line with 'best')"
            )
        records.append(record)
    return records


def run(config: EvaluateConfig) -> EvaluationReport:
    """Check the inputs belong together, compute the metrics, write `config.out` if given."""
    where = f"--gt {config.gt}"
    ground_truth = load_ground_truth(config.gt, where=where)
    vocabulary = _vocabulary(config.vocab, ground_truth)
    loaded = read_detections(config.detections)
    image_ids = loaded.image_ids
    notes = []
    if config.only_detected_images:
        image_ids = frozenset(int(d["image_id"]) for d in loaded.detections) | (image_ids or frozenset())
    elif image_ids is None:
        covered = {d.get("image_id") for d in loaded.detections}
        if len(covered) < len(ground_truth["images"]):
            notes.append(
                f"detections cover {len(covered)} of {len(ground_truth['images'])} ground-truth images; the others "
                "count as all missed (--only-detected-images scores only the covered ones)"
            )
    detection = evaluate_detections(loaded, ground_truth, split=config.split, vocabulary=vocabulary,
                                    image_ids=image_ids, where=where)
    detection.notes[:0] = notes
    region = None
    records = read_region_records(config.regions) if config.regions is not None else list(loaded.regions)
    if records:
        region = region_accuracy(records, ground_truth, vocabulary=vocabulary, split=config.split, where=where)
    levels = None
    if config.random_baseline:
        levels = random_score_levels(ground_truth, vocabulary=vocabulary, split=config.split, image_ids=image_ids)
    report = EvaluationReport(detection, region, levels, config)
    if config.out is not None:
        write_json(config.out, report.to_dict(), indent=2)
    return report
