"""`regionclip zeroshot`: recognise regions of any images with any vocabulary, no training."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class ProposalSource(str, Enum):
    random = "random"
    rpn = "rpn"


def zeroshot(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).", show_default=False)],
    vocab: Annotated[str, typer.Option("--vocab", "-v", help="Class names: coco, coco-ovd, lvis, world, a text file (one name per line) or 'cat,dog,fire hydrant'.")] = "coco",
    out: Annotated[Path, typer.Option(help="Output folder: detections.jsonl, detections_coco.json, pictures/, features/, metrics.json.")] = Path("runs/zeroshot"),
    model: Annotated[Optional[str], typer.Option(help="open_clip model name (ResNet family: RN50, RN50x4, ...; world-tiny is the built-in synthetic-world teacher). [default: RN50, or the model a --weights checkpoint names]", show_default=False)] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="open_clip pretrained tag, e.g. openai (downloads on a connected machine).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Local weights: open_clip/PyTorch state dict, OpenAI .pt archive, or a regionclip checkpoint.")] = None,
    boxes: Annotated[Optional[Path], typer.Option(help="Boxes to recognise: a COCO annotation JSON (its ground-truth boxes, matched by file name), a {file: [[x1,y1,x2,y2], ...]} JSON, or JSON Lines with 'file' and 'boxes'.")] = None,
    proposals: Annotated[ProposalSource, typer.Option(help="Proposals when --boxes is not given: random boxes on an 8-px grid (rpn: a later version).")] = ProposalSource.random,
    num_proposals: Annotated[int, typer.Option(min=1, help="Random proposals per image.")] = 300,
    templates: Annotated[str, typer.Option(help="Prompts: ensemble (80 CLIP ImageNet templates + '{}.'), single ('a photo of a {}.'), or a file with one template per line.")] = "ensemble",
    score_threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Drop detections scoring below this (paper: 0.001 COCO, 0.0001 LVIS).")] = 0.001,
    nms: Annotated[float, typer.Option(min=0.0, max=1.0, help="Per-class NMS IoU threshold.")] = 0.5,
    max_detections: Annotated[int, typer.Option(min=1, help="Detections kept per image (paper: 100 COCO, 300 LVIS).")] = 100,
    temperature: Annotated[float, typer.Option(min=1e-6, help="Softmax temperature of the cosine classifier.")] = 0.01,
    min_size: Annotated[Optional[int], typer.Option(min=16, help="Resize so the short side is this long [default: the checkpoint's, else 800].")] = None,
    max_size: Annotated[Optional[int], typer.Option(min=16, help="...unless the long side would exceed this [default: the checkpoint's, else 1333].")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass (padded together; raise it on a GPU).")] = 1,
    gt: Annotated[Optional[Path], typer.Option(help="COCO-format ground truth: evaluate and print AP/AP50 (novel/base/all for split vocabularies, APr/APc/APf for lvis).")] = None,
    save_vis: Annotated[bool, typer.Option("--save-vis/--no-save-vis", help="Write pictures with boxes and labels to OUT/pictures.")] = False,
    vis_threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Score needed to be drawn in pictures.")] = 0.3,
    save_features: Annotated[bool, typer.Option("--save-features", help="Write each image's region boxes and embeddings to OUT/features/*.npz.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where text embeddings are cached [default: $REGIONCLIP_CACHE or ~/.cache/regionclip].")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Zero-shot region recognition and detection with a CLIP model and any vocabulary.

    Each proposal is encoded by the region encoder (one trunk pass per image, RoIAlign, CLIP's
    res5 + attention pool), scored against the vocabulary's prompt embeddings (cosine / 0.01,
    softmax with a zero-logit background) and kept after per-class NMS.

    Examples:

      regionclip zeroshot photos/ --vocab "cat,dog,bicycle" --pretrained openai --save-vis

      regionclip zeroshot val2017/ --vocab coco-ovd --boxes instances_val2017.json --gt instances_val2017.json

    Exit codes: 0 all images done; 1 some images or boxes failed (named on stderr), the rest done;
    2 a usage or input error.
    """
    import time

    from regionclip_cli.stages.zeroshot import run as core
    from regionclip_cli.core.errors import NotBuiltYet, RegionclipError
    from regionclip_cli.core.progress import progress_bar, stderr_console
    from regionclip_cli.modeling.scoring import DetectionConfig

    if proposals is ProposalSource.rpn and boxes is None:
        raise NotBuiltYet("--proposals rpn: the RPN is not built yet; use --proposals random or --boxes FILE")
    for option, path in (("--boxes", boxes), ("--gt", gt), ("--weights", weights)):
        if path is not None and not path.is_file():
            raise RegionclipError(f"{option} {path}: no such file")
    if min_size is not None and max_size is not None and max_size < min_size:
        raise RegionclipError(f"--max-size {max_size} is smaller than --min-size {min_size}")

    job = core.prepare_job(
        images=images, vocab=vocab, model=model, pretrained=pretrained, weights=weights,
        templates=templates, boxes=boxes, num_random_boxes=num_proposals, gt=gt,
        detection=DetectionConfig(score_threshold, nms, max_detections, temperature),
        min_size=min_size, max_size=max_size, batch_size=batch_size, device=device,
        cache_dir=cache_dir, keep_originals=save_vis, progress=not quiet,
    )
    for problem in job.missing:
        stderr_console.print(f"[red]error:[/] {problem}", highlight=False)
    writer = core.DetectionWriter(out, save_pictures=save_vis, save_features=save_features)
    failures = len(job.missing)
    started = time.perf_counter()
    totals = {"images": 0, "boxes": 0, "detections": 0}
    processed_ids: set[int] = set()
    with progress_bar(disable=quiet) as bar:
        task = bar.add_task("zeroshot", total=len(job.paths), unit="img", status="")
        try:
            for result in job.detector.run(job.paths):
                bar.advance(task)
                if isinstance(result, core.FailedImage):
                    failures += 1
                    bar.console.print(f"[red]skipped[/] {result.reason}", highlight=False)
                    continue
                for problem in result.problems:
                    failures += 1
                    bar.console.print(f"[yellow]warning:[/] {problem}", highlight=False)
                core.write_result(writer, result, job.vocabulary, vis_threshold=vis_threshold)
                processed_ids.add(result.image_id)
                totals["images"] += 1
                totals["boxes"] += len(result.boxes)
                totals["detections"] += len(result.detections.scores)
                bar.update(task, status=f"{totals['detections']} detections")
        finally:
            writer.close()
    elapsed = time.perf_counter() - started
    metrics = core.evaluate(job, writer.coco_detections, processed_ids) if gt is not None else None
    core.write_summary(out, totals, failures, elapsed, metrics)
    _render_summary(out, totals, failures, elapsed, metrics)
    raise typer.Exit(1 if failures else 0)


def _render_summary(out: Path, totals: dict, failures: int, elapsed: float, metrics) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="zeroshot", show_header=False, title_justify="left")
    table.add_row("images done", f"{totals['images']}")
    table.add_row("failed inputs", f"{failures}")
    table.add_row("regions scored", f"{totals['boxes']}")
    table.add_row("detections", f"{totals['detections']}")
    table.add_row("time", f"{elapsed:.1f} s ({totals['images'] / max(elapsed, 1e-9):.2f} img/s)")
    table.add_row("outputs", f"{out}/detections.jsonl, {out}/detections_coco.json")
    if metrics is not None:
        for name, value in metrics.metrics.items():
            table.add_row(name, "–" if value != value else f"{value:.1f}")  # NaN: not measurable
    Console().print(table)
