"""Pseudo labels on disk: fixed shards of images, each written atomically, resumable.

The sorted image list is cut into shards of `shard_size` images; shard i always holds the same
images. A shard file exists only once it is complete (temp file + rename), so an interrupted run
resumes by writing the shards that are missing: no duplicates, no gaps. `manifest.json` records
the settings; a rerun with other settings into the same folder is refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from regionclip_cli.core.atomic import write_json, write_text
from regionclip_cli.core.errors import RegionclipError


@dataclass(frozen=True)
class ShardConfig:
    """Everything that changes the labels; equal settings make shards interchangeable."""

    model_identity: str
    concepts: str  # sha256 of the concept names, in order
    proposals: str
    regions_per_image: int
    threshold: float
    temperature: float
    seed: int
    shard_size: int
    images: str  # sha256 of the sorted image paths
    candidates: str = "pool"  # or `candidates_setting(captions file)`: labels among each image's mentions


def digest(items: list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode("utf-8")).hexdigest()[:16]


def candidates_setting(captions: Path | None) -> str:
    """`ShardConfig.candidates`: "pool", or "captions:" + a digest of the captions file's bytes."""
    if captions is None:
        return "pool"
    return "captions:" + hashlib.sha256(Path(captions).read_bytes()).hexdigest()[:16]


class ShardedLabels:
    def __init__(self, out_dir: Path, settings: ShardConfig, paths: list[Path], *, overwrite: bool = False):
        self.out_dir = Path(out_dir)
        self.shards_dir = self.out_dir / "shards"
        self.settings = settings
        self.paths = paths
        manifest = self.out_dir / "manifest.json"
        if manifest.exists():
            saved = json.loads(manifest.read_text(encoding="utf-8")).get("settings")
            if isinstance(saved, dict):
                saved = {"candidates": "pool", **saved}  # folders from before caption candidates
            if saved != asdict(settings):
                if not overwrite:
                    changed = [k for k, v in asdict(settings).items() if (saved or {}).get(k) != v]
                    raise RegionclipError(
                        f"{self.out_dir}: holds pseudo labels made with other settings "
                        f"({', '.join(changed)}); use another --out or --overwrite")
                shutil.rmtree(self.shards_dir, ignore_errors=True)
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        write_json(manifest, {"settings": asdict(settings), "num_images": len(paths),
                              "num_shards": self.num_shards}, indent=2)

    @property
    def num_shards(self) -> int:
        size = self.settings.shard_size
        return (len(self.paths) + size - 1) // size

    def shard_path(self, index: int) -> Path:
        return self.shards_dir / f"shard-{index:05d}.jsonl"

    def shard_images(self, index: int) -> list[Path]:
        size = self.settings.shard_size
        return self.paths[index * size: (index + 1) * size]

    def pending(self) -> list[int]:
        return [i for i in range(self.num_shards) if not self.shard_path(i).exists()]

    def write_shard(self, index: int, records: list[dict]) -> None:
        write_text(self.shard_path(index), "".join(json.dumps(r) + "\n" for r in records))

    def records(self) -> Iterator[dict]:
        for index in range(self.num_shards):
            path = self.shard_path(index)
            if path.exists():
                for line in path.read_text(encoding="utf-8").splitlines():
                    yield json.loads(line)

    def summary(self, top: int = 20) -> dict:
        """Label histogram, mean top-1 probability and kept fraction over every written shard."""
        histogram: Counter[str] = Counter()
        images = failed = regions = kept = 0
        score_sum = 0.0
        for record in self.records():
            if "error" in record:
                failed += 1
                continue
            images += 1
            for region in record["regions"]:
                regions += 1
                histogram[region["concept"]] += 1
                score_sum += region["score"]
                kept += bool(region["keep"])
        return {
            "images": images,
            "failed_images": failed,
            "regions": regions,
            "mean_top1_probability": score_sum / regions if regions else 0.0,
            "kept_fraction": kept / regions if regions else 0.0,
            "distinct_labels": len(histogram),
            "label_histogram": dict(histogram.most_common(top)),
        }


@dataclass
class PrecomputedLabels:
    """Labels written by `regionclip pseudolabel`, looked up by image file name for pretraining."""

    settings: dict
    records: list[dict]

    def __post_init__(self) -> None:
        from regionclip_cli.data.proposals import FileNameIndex

        self._index = FileNameIndex([r["file"] for r in self.records])

    def for_image(self, path: Path) -> dict:
        found = self._index.find(path)
        if found is None:
            raise RegionclipError(f"pseudo_labels.precomputed: no labels for {path}")
        return self.records[found]


def load_precomputed(out_dir: Path, concept_names: list[str]) -> PrecomputedLabels:
    """Read a finished `pseudolabel` folder; its concept pool must be the one training uses."""
    manifest_path = Path(out_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise RegionclipError(f"pseudo_labels.precomputed {out_dir}: no manifest.json (not a pseudolabel folder)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    settings = manifest["settings"]
    if settings["concepts"] != digest(concept_names):
        raise RegionclipError(f"pseudo_labels.precomputed {out_dir}: labelled with another concept pool")
    records = []
    for index in range(manifest["num_shards"]):
        path = Path(out_dir) / "shards" / f"shard-{index:05d}.jsonl"
        if not path.is_file():
            raise RegionclipError(f"pseudo_labels.precomputed {out_dir}: shard {index} is missing; "
                                  "rerun the same `regionclip pseudolabel` command to finish it")
        records.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    return PrecomputedLabels(settings, [r for r in records if "error" not in r])
