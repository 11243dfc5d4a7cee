"""Zero-shot region recognition and detection: the RegionCLIP inference pipeline as a library.

Images stream through in small batches: decode and resize (in background threads), one trunk pass
per batch, every proposal of every image through RoIAlign + CLIP's res5 + attention pool at once,
then the vocabulary classifier and per-class NMS. Memory stays bounded by the batch, not the
number of images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from PIL import Image

from regionclip_cli.core.atomic import write_json
from regionclip_cli.modeling.batchnorm_folding import fold_batchnorm
from regionclip_cli.data.detections import DetectionWriter, ImageDetections
from regionclip_cli.core.devices import resolve_device
from regionclip_cli.core.errors import InputError, RegionclipError
from regionclip_cli.data.images import ImageLoader, LoadedImage, ResizeConfig, find_images
from regionclip_cli.modeling.clip import LoadedClip, load_clip
from regionclip_cli.data.proposals import BoxFile, FileNameIndex, ProposalSource, RandomBoxConfig
from regionclip_cli.modeling.region_encoder import RegionEncoder, embed_image_regions
from regionclip_cli.modeling.scoring import DetectionConfig, Detections, class_probabilities, select_detections
from regionclip_cli.modeling.text import embed_names, resolve_templates
from regionclip_cli.data.vocab import Vocabulary, load_vocabulary

DEFAULT_MIN_SIZE = 800
DEFAULT_MAX_SIZE = 1333


@dataclass(frozen=True)
class ZeroShotConfig:
    """How images are sized, batched, proposed and post-processed."""

    resize: ResizeConfig = field(default_factory=ResizeConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    random_boxes: RandomBoxConfig = field(default_factory=RandomBoxConfig)
    batch_size: int = 1
    loader_threads: int = 2
    keep_originals: bool = False  # keep decoded originals on results, for drawing pictures


@dataclass
class RegionResult:
    """One image's proposals, their embeddings and the detections chosen among them."""

    path: Path
    width: int
    height: int
    image_id: int
    boxes: torch.Tensor  # proposals, original-image pixels
    embeddings: torch.Tensor  # [N, D] L2-normalised, on CPU
    detections: Detections
    problems: list[str]  # boxes that were skipped, one line each
    original: Image.Image | None = None

    def as_dicts(self, vocabulary: Vocabulary) -> list[dict]:
        det = self.detections
        return [
            {"box": [round(v, 2) for v in box], "label": vocabulary.names[c],
             "category_id": vocabulary.category_ids[c], "score": round(s, 5)}
            for box, c, s in zip(det.boxes.tolist(), det.classes.tolist(), det.scores.tolist())
        ]


@dataclass
class FailedImage:
    path: Path
    reason: str


class ZeroShotDetector:
    """A CLIP model + a vocabulary's text embeddings = an open-vocabulary region classifier.

    It folds the model's image-tower batch norm into the convolutions (exact, faster; the model
    is inference-only from here on).
    """

    def __init__(self, clip: LoadedClip, class_embeddings: torch.Tensor, spec: ZeroShotConfig,
                 box_file: BoxFile | None = None,
                 image_id_of: Callable[[Path], int | None] | None = None):
        self.clip = clip
        fold_batchnorm(clip.model.visual.eval())
        self.encoder = RegionEncoder(clip.model.visual).eval()
        self.class_embeddings = class_embeddings.to(clip.device)
        self.spec = spec
        self.proposals = ProposalSource(box_file, spec.random_boxes)
        self.image_id_of = image_id_of
        self._next_id = 1

    def _image_id(self, path: Path, entry_id: int | None) -> int:
        found = self.image_id_of(path) if self.image_id_of else None
        if found is None:
            found = entry_id
        if found is None:
            found = self._next_id
        self._next_id = max(self._next_id, found) + 1
        return found

    def run(self, paths: Iterable[Path]) -> Iterator[RegionResult | FailedImage]:
        """Yield one result per path, in order; bad images become FailedImage, the rest go on."""
        loader = ImageLoader(paths, mean=self.clip.mean, std=self.clip.std, resize=self.spec.resize,
                             workers=self.spec.loader_threads, keep_original=self.spec.keep_originals)
        pending: list[tuple[LoadedImage, torch.Tensor, int, list[str]]] = []
        for item in loader:
            if not isinstance(item, LoadedImage):
                yield FailedImage(item.path, item.message)
                continue
            try:
                found = self.proposals.for_image(item.path, *item.original_size)
            except InputError as error:
                yield FailedImage(item.path, str(error))
                continue
            pending.append((item, found.boxes, self._image_id(item.path, found.image_id), found.problems))
            if len(pending) == self.spec.batch_size:
                yield from self._finish(pending)
                pending = []
        if pending:
            yield from self._finish(pending)

    def _finish(self, pending) -> Iterator[RegionResult]:
        images = [p[0] for p in pending]
        with torch.inference_mode():
            embeddings = embed_image_regions(self.encoder, images, [p[1] for p in pending], self.clip.device)
        for (image, boxes, image_id, problems), emb in zip(pending, embeddings):
            probabilities = class_probabilities(emb, self.class_embeddings, self.spec.detection.temperature)
            detections = select_detections(boxes.to(emb.device), probabilities, self.spec.detection)
            width, height = image.original_size
            yield RegionResult(
                path=image.path, width=width, height=height, image_id=image_id,
                boxes=boxes.cpu(), embeddings=emb.cpu(),
                detections=Detections(detections.boxes.cpu(), detections.scores.cpu(),
                                      detections.classes.cpu()),
                problems=problems,
                original=image.image,
            )


@dataclass
class ZeroShotJob:
    """Everything a zeroshot run needs, checked and loaded before the first image is touched."""

    paths: list[Path]
    missing: list[str]  # inputs named on the command line that yielded no image
    vocabulary: Vocabulary
    detector: ZeroShotDetector
    ground_truth: dict | None


def resize_for(clip: LoadedClip, min_size: int | None, max_size: int | None) -> ResizeConfig:
    """The options, else the checkpoint's recommended sizes, else detectron2's 800/1333."""
    return ResizeConfig(min_size or clip.input_min_size or DEFAULT_MIN_SIZE,
                      max_size or clip.input_max_size or DEFAULT_MAX_SIZE)


def _read_ground_truth(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RegionclipError(f"--gt {path}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise RegionclipError(f"--gt {path}: not a COCO annotation file (needs images, annotations, categories)")
    return data


def _gt_image_ids(ground_truth: dict) -> Callable[[Path], int | None]:
    images = ground_truth["images"]
    index = FileNameIndex([str(img["file_name"]) for img in images])

    def image_id_of(path: Path) -> int | None:
        found = index.find(path)
        return None if found is None else int(images[found]["id"])

    return image_id_of


def prepare_job(*, images: list[Path], vocab: str, model: str | None, pretrained: str | None,
                weights: Path | None, templates: str, boxes: Path | None, num_random_boxes: int,
                gt: Path | None, detection: DetectionConfig, min_size: int | None,
                max_size: int | None, batch_size: int, device: str, cache_dir: Path | None,
                keep_originals: bool, progress: bool) -> ZeroShotJob:
    """Resolve every option (cheap checks first, the model last) into a ready ZeroShotJob."""
    vocabulary = load_vocabulary(vocab)
    prompt_templates = resolve_templates(templates)
    paths, missing = find_images(images)
    if not paths:
        raise RegionclipError("no images to process: " + "; ".join(missing or ["no inputs given"]))
    box_file = BoxFile(boxes) if boxes is not None else None
    ground_truth = _read_ground_truth(gt) if gt is not None else None
    if ground_truth is not None and vocabulary.name not in ("coco", "coco-ovd", "lvis"):
        vocabulary = vocabulary.aligned_to(ground_truth["categories"])
    clip = load_clip(model, pretrained=pretrained, weights=weights, device=resolve_device(device))
    resize = resize_for(clip, min_size, max_size)
    class_embeddings = embed_names(clip, vocabulary.names, prompt_templates, cache_dir=cache_dir,
                                   progress=progress)
    spec = ZeroShotConfig(resize=resize, detection=detection,
                        random_boxes=RandomBoxConfig(count=num_random_boxes), batch_size=batch_size,
                        keep_originals=keep_originals)
    detector = ZeroShotDetector(clip, class_embeddings, spec, box_file=box_file,
                                image_id_of=_gt_image_ids(ground_truth) if ground_truth else None)
    return ZeroShotJob(paths, missing, vocabulary, detector, ground_truth)


def write_result(writer: DetectionWriter, result: RegionResult, vocabulary: Vocabulary, *,
                 vis_threshold: float) -> None:
    """Hand one image's result to the writer, drawing its picture only if pictures are wanted."""
    detections = result.as_dicts(vocabulary)
    picture = None
    if writer.pictures_dir is not None and result.original is not None:
        from regionclip_cli.data.pictures import draw_detections

        picture = draw_detections(result.original, detections, score_threshold=vis_threshold)
    writer.add(
        ImageDetections(result.path, result.width, result.height, result.image_id, detections),
        picture=picture,
        boxes=result.boxes.numpy(),
        features=result.embeddings.numpy(),
    )


def evaluate(job: ZeroShotJob, detections: list[dict], processed_ids: set[int]):
    """COCO AP (per split for base/novel vocabularies) or LVIS AP/APr/APc/APf, on the images processed."""
    from regionclip_cli.evaluation.coco import evaluate_coco, evaluate_lvis

    gt = dict(job.ground_truth)
    gt["images"] = [img for img in gt["images"] if int(img["id"]) in processed_ids]
    gt["annotations"] = [a for a in gt["annotations"] if int(a["image_id"]) in processed_ids]
    if {"r", "c", "f"} <= set(job.vocabulary.splits):
        return evaluate_lvis(gt, detections)
    splits = {k: list(v) for k, v in job.vocabulary.splits.items() if k in ("base", "novel")}
    return evaluate_coco(gt, detections, split=splits or None)


def write_summary(out: Path, totals: dict, failures: int, elapsed: float, metrics) -> None:
    summary = {**totals, "failed_inputs": failures, "seconds": round(elapsed, 3),
               "images_per_second": round(totals["images"] / max(elapsed, 1e-9), 3)}
    if metrics is not None:
        summary["metrics"] = metrics.to_dict()["metrics"]
    write_json(Path(out) / "metrics.json", summary, indent=2)
