"""Zero-shot region recognition and detection: the RegionCLIP inference stage as a library call.

`run(ZeroShotConfig(...))` is what `regionclip zeroshot` calls and what Python code calls the same
way: options are checked and the output folder settled before the model loads, images then
stream through the shared region pipeline (`stages.regions`), each region is scored against the
vocabulary (cosine / 0.01, softmax with a zero-logit background), detections are kept after
per-class NMS, and with `gt` the run is evaluated. The result object says what happened; the CLI
only renders it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.data.coco import CocoFile, read_coco
from regionclip_cli.data.images import ImageTransform, NamedImage, ResizeConfig, find_images
from regionclip_cli.data.proposals import FileNameIndex, ProposalConfig, ProposalSource
from regionclip_cli.data.vocab import Vocabulary, load_vocabulary, vocabulary_from_names
from regionclip_cli.modeling.scoring import DetectionConfig, Detections, class_probabilities, select_detections
from regionclip_cli.stages.regions import EmbeddedImage, SkippedImage, best_separated, embed_regions
from regionclip_cli.stages.zeroshot.outputs import OutputFolder, run_settings

DEFAULT_MIN_SIZE = 800
DEFAULT_MAX_SIZE = 1333
RANDOM_PROPOSALS_NOTE = (
    "random proposals are good for pseudo labels and region features, not for pictures of "
    "detections (nearly every random box gets a confident class); pictures show the best "
    "non-overlapping boxes. For detection use --boxes FILE"
)


@dataclass(frozen=True)
class ZeroShotConfig:
    """Everything one zeroshot run needs; the CLI's options map onto it one to one.

    `images`: paths (files or folders) or `NamedImage`s held in memory. `vocab`: as `--vocab`
    (a built-in name, a file, 'a,b,c') or a list of names. `out=None` writes nothing (the results
    come back on the result object only).
    """

    images: Sequence
    vocab: str | Sequence[str] = "coco"
    out: Path | None = Path("runs/zeroshot")
    model: str | None = None
    pretrained: str | None = None
    weights: Path | None = None
    templates: str = "ensemble"
    class_embeddings: Path | None = None
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    min_size: int | None = None
    max_size: int | None = None
    batch_size: int = 1
    gt: Path | None = None
    save_vis: bool = False
    vis_threshold: float = 0.3
    save_features: bool = False
    device: str = "auto"
    cache_dir: Path | None = None
    overwrite: bool = False
    progress: bool = True  # text-embedding progress bar
    keep_results: bool = False  # keep every image's result on the returned object (the Python API)
    loader_threads: int = 2


@dataclass
class ImageResult:
    """One image's detections (JSON-ready dicts) and, per proposal, its best class before any threshold."""

    file: Path
    width: int
    height: int
    image_id: int
    detections: list[dict]
    boxes: torch.Tensor  # every proposal, original pixels
    best_category_ids: list[int]
    best_scores: list[float]

    def as_record(self) -> dict:
        """The detections.jsonl shape."""
        return {"file": str(self.file), "width": self.width, "height": self.height,
                "detections": self.detections}


@dataclass
class ZeroShotResult:
    """What a run did: counts, failures (one line each), metrics, and where the outputs are."""

    images_done: int = 0
    images_total: int = 0
    regions: int = 0
    detections: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metrics: object | None = None  # evaluation.EvalResult
    region_accuracy: object | None = None  # evaluation.region_accuracy.RegionAccuracy
    out: Path | None = None
    resumed: int = 0  # images taken over from an interrupted run with the same settings
    results: list[ImageResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures or self.warnings else 0


class ZeroShotInterrupted(RegionclipError):
    """Ctrl-C during a run: what was written and how to finish, in one line."""

    exit_code = 130


class Reporter:
    """What a run tells as it goes; the CLI draws a progress bar from it, Python code may ignore it."""

    def start(self, total: int, done: int) -> None: ...

    def advance(self, detections_so_far: int) -> None: ...

    def failure(self, line: str) -> None: ...

    def warning(self, line: str) -> None: ...

    def note(self, line: str) -> None: ...


def resize_for(clip, min_size: int | None, max_size: int | None) -> ResizeConfig:
    """The options, else the checkpoint's recommended sizes, else detectron2's 800/1333; bilinear."""
    return ResizeConfig(min_size or clip.input_min_size or DEFAULT_MIN_SIZE,
                        max_size or clip.input_max_size or DEFAULT_MAX_SIZE)


def _vocabulary(spec: str | Sequence[str]) -> Vocabulary:
    if isinstance(spec, str):
        return load_vocabulary(spec)
    return vocabulary_from_names(list(spec))


def _check_options(config: ZeroShotConfig) -> None:
    for option, path in (("--gt", config.gt), ("--weights", config.weights),
                         ("--class-embeddings", config.class_embeddings)):
        if path is not None and not Path(path).is_file():
            raise RegionclipError(f"{option} {path}: no such file")
    if config.min_size is not None and config.max_size is not None and config.max_size < config.min_size:
        raise RegionclipError(f"--max-size {config.max_size} is smaller than --min-size {config.min_size}")
    if config.batch_size < 1:
        raise RegionclipError(f"--batch-size {config.batch_size}: needs at least 1")


def _inputs(images: Sequence) -> tuple[list, list[str]]:
    in_memory = [item for item in images if isinstance(item, NamedImage)]
    if in_memory and len(in_memory) == len(images):
        return list(images), []
    if in_memory:
        raise RegionclipError("images: pass either paths or in-memory images, not both")
    return find_images(images)


def _gt_image_ids(coco: CocoFile, paths: list, where: str) -> Callable[[Path], int | None]:
    index = FileNameIndex([img["file_name"] for img in coco.images])
    index.check_unambiguous([Path(p) for p in paths], where)
    images = coco.images

    def image_id_of(path: Path) -> int | None:
        found = index.find(path)
        return None if found is None else int(images[found]["id"])

    return image_id_of


def _same_file(a: Path | None, b: Path | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def run(config: ZeroShotConfig, reporter: Reporter | None = None) -> ZeroShotResult:
    """Run zero-shot recognition as configured; raises `RegionclipError` for bad options or inputs.

    Images that cannot be used are listed in `result.failures` and the rest are processed.
    """
    from regionclip_cli.core.devices import resolve_device
    from regionclip_cli.modeling.clip import load_clip
    from regionclip_cli.modeling.region_encoder import frozen_region_encoder
    from regionclip_cli.modeling.text import resolve_templates

    reporter = reporter or Reporter()
    _check_options(config)
    vocabulary = _vocabulary(config.vocab)
    templates = resolve_templates(config.templates) if config.class_embeddings is None else []
    paths, missing = _inputs(config.images)
    if not paths:
        raise RegionclipError("no images to process: " + "; ".join(missing or ["no inputs given"]))
    proposals = ProposalSource(config.proposals)
    proposals.check([Path(p.name if isinstance(p, NamedImage) else p) for p in paths])
    ground_truth = read_coco(config.gt, f"--gt {config.gt}") if config.gt is not None else None
    image_id_of = None
    if ground_truth is not None:
        from regionclip_cli.evaluation import check_vocabulary

        if vocabulary.name not in ("coco", "coco-ovd", "lvis"):
            vocabulary = vocabulary.aligned_to(ground_truth.categories)
        check_vocabulary(vocabulary, ground_truth.data, where=f"--gt {config.gt}")
        image_id_of = _gt_image_ids(ground_truth, paths, f"--gt {config.gt}")
    region_records = ground_truth is not None and _same_file(config.proposals.file, config.gt)

    folder = None
    if config.out is not None:
        settings = run_settings(config, vocabulary, templates, paths)
        folder = OutputFolder(Path(config.out), settings, overwrite=config.overwrite,
                              pictures=config.save_vis, features=config.save_features)

    clip = load_clip(config.model, pretrained=config.pretrained, weights=config.weights,
                     device=resolve_device(config.device))
    class_embeddings = _class_embeddings(config, clip, vocabulary, templates).to(clip.device)
    encoder = frozen_region_encoder(clip.model.visual)
    transform = ImageTransform(clip.mean, clip.std, resize_for(clip, config.min_size, config.max_size))
    if folder is not None:
        folder.open()

    result = ZeroShotResult(images_total=len(paths), failures=list(missing), out=folder.path if folder else None)
    result.notes.extend(clip.notes)
    if proposals.is_random:
        result.notes.append(RANDOM_PROPOSALS_NOTE)
    done_files = folder.done_files if folder else set()
    result.resumed = len(done_files)
    todo = [p for p in paths if str(p) not in done_files] if done_files else paths
    ids = _ImageIds(image_id_of, folder.used_ids if folder else set())
    reporter.start(len(paths), len(paths) - len(todo))
    for line in missing:
        reporter.failure(line)
    started = time.perf_counter()
    try:
        for item in embed_regions(encoder, transform, proposals, todo, device=clip.device,
                                  batch_size=config.batch_size, loader_threads=config.loader_threads,
                                  keep_originals=config.save_vis):
            if isinstance(item, SkippedImage):
                result.failures.append(item.reason)
                reporter.failure(item.reason)
                reporter.advance(result.detections)
                continue
            image_result = _score(item, class_embeddings, vocabulary, config.detection, ids)
            for problem in item.problems:
                result.warnings.append(problem)
                reporter.warning(problem)
            if folder is not None:
                folder.add(image_result, item, best=region_records, picture=_picture(config, item, image_result))
            if config.keep_results:
                result.results.append(image_result)
            result.images_done += 1
            result.regions += len(image_result.boxes)
            result.detections += len(image_result.detections)
            reporter.advance(result.detections)
    except KeyboardInterrupt:
        if folder is None:
            raise
        folder.close(complete=False)
        raise ZeroShotInterrupted(
            f"interrupted after {result.images_done + result.resumed} of {len(paths)} images: their results are "
            f"in {folder.partial_path}; rerun the same command to finish (it resumes after them), or add "
            "--overwrite to start again") from None
    result.seconds = time.perf_counter() - started
    if folder is not None:
        folder.close(complete=True)
    if ground_truth is not None:
        rows = folder.coco_rows if folder else [row for r in result.results for row in _coco_rows(r)]
        image_ids = folder.image_ids if folder else {r.image_id for r in result.results}
        result.metrics = _evaluate_detections(rows, ground_truth, vocabulary, image_ids, config.gt)
        if region_records:
            records = folder.region_records() if folder else [_region_record(r) for r in result.results]
            result.region_accuracy = _evaluate_regions(records, ground_truth, vocabulary, config.gt)
    if folder is not None:
        folder.write_summary(result)
    return result


class _ImageIds:
    """Image ids: the ground truth's, else the box file's, else the next free number."""

    def __init__(self, from_gt: Callable[[Path], int | None] | None, used: set[int]):
        self.from_gt = from_gt
        self.next_id = max(used, default=0) + 1

    def __call__(self, path: Path, entry_id: int | None) -> int:
        found = self.from_gt(path) if self.from_gt else None
        if found is None:
            found = entry_id
        if found is None:
            found = self.next_id
        self.next_id = max(self.next_id, found) + 1
        return found


def _class_embeddings(config: ZeroShotConfig, clip, vocabulary: Vocabulary, templates: list[str]) -> torch.Tensor:
    from regionclip_cli.modeling.text import embed_names, read_class_embeddings

    if config.class_embeddings is not None:
        return read_class_embeddings(config.class_embeddings, clip, vocabulary)
    return embed_names(clip, vocabulary.names, templates, cache_dir=config.cache_dir, progress=config.progress)


def _score(item: EmbeddedImage, class_embeddings: torch.Tensor, vocabulary: Vocabulary,
           detection: DetectionConfig, ids: _ImageIds) -> ImageResult:
    probabilities = class_probabilities(item.embeddings, class_embeddings, detection.temperature)
    if item.objectness is not None:
        from regionclip_cli.modeling.detector.postprocess import combine_scores

        # RPN proposals: sqrt(class probability x sigmoid objectness), the original's zero-shot
        # score with objectness read as a probability (see combine_scores).
        probabilities = combine_scores(probabilities, item.objectness.to(probabilities.device))
    boxes = item.boxes.to(probabilities.device)
    chosen: Detections = select_detections(boxes, probabilities, detection)
    if len(probabilities):
        best_scores, best = probabilities.max(dim=1)
    else:
        best_scores, best = probabilities.new_zeros(0), torch.zeros(0, dtype=torch.long)
    names, category_ids = vocabulary.names, vocabulary.category_ids
    detections = [
        {"box": [round(v, 2) for v in box], "label": names[c], "category_id": category_ids[c], "score": round(s, 5)}
        for box, c, s in zip(chosen.boxes.tolist(), chosen.classes.tolist(), chosen.scores.tolist())
    ]
    width, height = item.image.original_size
    return ImageResult(
        file=item.path, width=width, height=height, image_id=ids(item.path, item.image_id),
        detections=detections, boxes=item.boxes,
        best_category_ids=[category_ids[c] for c in best.tolist()],
        best_scores=[round(s, 5) for s in best_scores.tolist()],
    )


def _picture(config: ZeroShotConfig, item: EmbeddedImage, result: ImageResult):
    if not config.save_vis or item.image.image is None:
        return None
    from regionclip_cli.data.pictures import draw_detections

    return draw_detections(item.image.image, best_separated(result.detections, config.vis_threshold),
                           score_threshold=config.vis_threshold)


def _coco_rows(result: ImageResult) -> list[dict]:
    from regionclip_cli.data.detections import ImageDetections, coco_results

    return coco_results(ImageDetections(result.file, result.width, result.height, result.image_id,
                                        result.detections))


def _region_record(result: ImageResult) -> dict:
    return {"file": str(result.file), "image_id": result.image_id,
            "boxes": [[round(v, 2) for v in b] for b in result.boxes.tolist()],
            "category_ids": result.best_category_ids, "scores": result.best_scores}


def _evaluate_detections(rows: list[dict], ground_truth: CocoFile, vocabulary: Vocabulary,
                         image_ids: set[int], gt_path: Path):
    """COCO AP (per split for base/novel vocabularies) or LVIS AP/APr/APc/APf, on the images run."""
    from regionclip_cli.evaluation import evaluate_detections

    return evaluate_detections(rows, ground_truth.data, vocabulary=vocabulary, image_ids=image_ids,
                               where=f"--gt {gt_path}")


def _evaluate_regions(records: list[dict], ground_truth: CocoFile, vocabulary: Vocabulary, gt_path: Path):
    """Region top-1 accuracy: the best class of each ground-truth box, before thresholds and NMS."""
    from regionclip_cli.evaluation.region_accuracy import region_accuracy

    return region_accuracy(records, ground_truth.data, vocabulary=vocabulary, where=f"--gt {gt_path}")
