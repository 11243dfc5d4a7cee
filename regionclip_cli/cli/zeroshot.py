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
    vocab: Annotated[str, typer.Option("--vocab", "-v", help="Class names: coco, coco-ovd, lvis, world, one split of these (world:novel, lvis:r), a text file (one name per line) or 'cat,dog,fire hydrant'.")] = "coco",
    out: Annotated[Path, typer.Option(help="Output folder: detections.jsonl, detections_coco.json, pictures/, features/, metrics.json.")] = Path("runs/zeroshot"),
    model: Annotated[Optional[str], typer.Option(help="open_clip model name (ResNet family: RN50, RN50x4, ...; world-tiny is the built-in synthetic-world teacher). [default: RN50, or the model a --weights checkpoint names]", show_default=False)] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="open_clip pretrained tag, e.g. openai (downloads on a connected machine).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Local weights: open_clip/PyTorch state dict, OpenAI .pt archive, or a regionclip checkpoint.")] = None,
    boxes: Annotated[Optional[Path], typer.Option(help="Boxes to recognise: a COCO annotation JSON (its ground-truth boxes, matched by file name), a {file: [[x1,y1,x2,y2], ...]} JSON, or JSON Lines with 'file' and 'boxes'.")] = None,
    proposals: Annotated[ProposalSource, typer.Option(help="Proposals when --boxes is not given: random boxes on an 8-px grid, good for region features and pseudo labels, not for pictures of detections; rpn: the --rpn network's 1,000 best boxes after NMS 0.9, scored sqrt(class probability x objectness) with objectness a sigmoid probability (the original multiplies by the raw logit, which gives NaN and scores over 1).")] = ProposalSource.random,
    rpn: Annotated[Optional[Path], typer.Option(help="RPN checkpoint for --proposals rpn (written by `regionclip rpn`).")] = None,
    num_proposals: Annotated[int, typer.Option(min=1, help="Random proposals per image (at most 10,000).")] = 300,
    templates: Annotated[str, typer.Option(help="Prompts: ensemble (80 CLIP ImageNet templates + '{}.'), single ('a photo of a {}.'), or a file with one template per line.")] = "ensemble",
    class_embeddings: Annotated[Optional[Path], typer.Option(help="A [classes, width] tensor file of class embeddings (e.g. the original RegionCLIP's), one row per --vocab class, instead of embedding the names.")] = None,
    score_threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Drop detections scoring below this (paper: 0.001 COCO, 0.0001 LVIS).")] = 0.001,
    nms: Annotated[float, typer.Option(min=0.0, max=1.0, help="Per-class NMS IoU threshold.")] = 0.5,
    max_detections: Annotated[int, typer.Option(min=1, help="Detections kept per image (paper: 100 COCO, 300 LVIS).")] = 100,
    temperature: Annotated[float, typer.Option(min=1e-6, help="Softmax temperature of the cosine classifier.")] = 0.01,
    min_size: Annotated[Optional[int], typer.Option(min=16, help="Resize so the short side is this long [default: the checkpoint's, else 800].")] = None,
    max_size: Annotated[Optional[int], typer.Option(min=16, help="...unless the long side would exceed this [default: the checkpoint's, else 1333].")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images decoded and padded together; the model splits large batches into chunks, so it changes speed, not results beyond padding.")] = 1,
    gt: Annotated[Optional[Path], typer.Option(help="COCO-format ground truth: evaluate and print AP/AP50 (novel/base/all for split vocabularies, APr/APc/APf for lvis).")] = None,
    save_vis: Annotated[bool, typer.Option("--save-vis/--no-save-vis", help="Write pictures with boxes and labels to OUT/pictures.")] = False,
    vis_threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Score needed to be drawn in pictures.")] = 0.3,
    save_features: Annotated[bool, typer.Option("--save-features", help="Write each image's region boxes and embeddings to OUT/features/*.npz.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace results in OUT made with other settings.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where text embeddings are cached [default: $REGIONCLIP_CACHE or ~/.cache/regionclip].")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Zero-shot region recognition and detection with a CLIP model and any vocabulary.

    Each proposal is encoded by the region encoder (one trunk pass per image, RoIAlign, CLIP's
    res5 + attention pool), scored against the vocabulary's prompt embeddings (cosine / 0.01,
    softmax with a zero-logit background) and kept after per-class NMS. With the ground truth's
    own boxes (--boxes ann.json --gt ann.json) it also reports region top-1 accuracy: the best
    class of each box before thresholds and NMS.

    OUT/settings.json records what made the folder; a rerun with the same settings resumes an
    interrupted run, other settings are refused unless --overwrite.

    Examples:

      regionclip zeroshot val2017/ --vocab coco-ovd --boxes instances_val2017.json --gt instances_val2017.json

      regionclip zeroshot photos/ --vocab "cat,dog,bicycle" --pretrained openai --save-features

    Exit codes: 0 all images done; 1 some images or boxes failed (named on stderr), the rest done;
    2 a usage or input error; 130 interrupted (rerun the same command to finish).
    """
    from regionclip_cli.core.errors import RegionclipError
    from regionclip_cli.data.proposals import ProposalConfig, RandomBoxConfig
    from regionclip_cli.modeling.scoring import DetectionConfig
    from regionclip_cli.stages import zeroshot as stage

    use_rpn = proposals is ProposalSource.rpn and boxes is None
    if use_rpn and rpn is None:
        raise RegionclipError("--proposals rpn needs --rpn FILE (an RPN checkpoint written by `regionclip rpn`)")
    if rpn is not None and not use_rpn:
        raise RegionclipError("--rpn is used with --proposals rpn (and without --boxes)")
    config = stage.ZeroShotConfig(
        images=images, vocab=vocab, out=out, model=model, pretrained=pretrained, weights=weights,
        templates=templates, class_embeddings=class_embeddings,
        proposals=ProposalConfig("file" if boxes is not None else "rpn" if use_rpn else "random", boxes,
                                 RandomBoxConfig(count=num_proposals), rpn=rpn),
        detection=DetectionConfig(score_threshold, nms, max_detections, temperature),
        min_size=min_size, max_size=max_size, batch_size=batch_size, gt=gt, save_vis=save_vis,
        vis_threshold=vis_threshold, save_features=save_features, device=device, cache_dir=cache_dir,
        overwrite=overwrite, progress=not quiet,
    )
    with _BarReporter(quiet) as reporter:
        try:
            result = stage.run(config, reporter)
        except stage.ZeroShotInterrupted as interrupted:
            reporter.close()
            typer.echo(f"interrupted: {interrupted}", err=True)
            raise typer.Exit(130) from None
    _render_summary(result)
    raise typer.Exit(result.exit_code)


class _BarReporter:
    """The stage's progress and problems, drawn as a rich progress bar with lines above it."""

    def __init__(self, quiet: bool):
        from regionclip_cli.core.progress import progress_bar

        self.bar = progress_bar(disable=quiet)
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.bar.stop()

    def start(self, total: int, done: int) -> None:
        self.task = self.bar.add_task("zeroshot", total=total, completed=done, unit="img", status="")

    def advance(self, detections_so_far: int) -> None:
        self.bar.update(self.task, advance=1, status=f"{detections_so_far} detections")

    def failure(self, line: str) -> None:
        from rich.markup import escape

        self.bar.console.print(f"[red]skipped[/] {escape(line)}", highlight=False)

    def warning(self, line: str) -> None:
        from rich.markup import escape

        self.bar.console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)


def _render_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from regionclip_cli.core.progress import stderr_console

    for line in result.notes:
        stderr_console.print(f"note: {line}", highlight=False, markup=False)
    table = Table(title="zeroshot", show_header=False, title_justify="left")
    done = result.images_done + result.resumed
    table.add_row("images done", f"{done}" + (f" ({result.resumed} from the interrupted run)" if result.resumed else ""))
    table.add_row("failed inputs", f"{len(result.failures)}")
    table.add_row("regions scored", f"{result.regions}")
    table.add_row("detections", f"{result.detections}")
    table.add_row("time", f"{result.seconds:.1f} s ({result.images_done / max(result.seconds, 1e-9):.2f} img/s)")
    if result.out is not None:
        table.add_row("outputs", f"{result.out}/detections.jsonl, {result.out}/detections_coco.json")
    if result.region_accuracy is not None:
        accuracy = result.region_accuracy
        for name, group in accuracy.groups.items():
            value = group.accuracy
            table.add_row(f"region top-1 {name}", "–" if value != value else f"{value:.1f}% of {group.total}")
        table.add_row("chance (1/K)", f"{accuracy.chance:.1f}%")
    if result.metrics is not None:
        for name, value in result.metrics.metrics.items():
            table.add_row(name, "–" if value != value else f"{value:.1f}")  # NaN: not measurable
    Console().print(table)
    notes = list(result.metrics.notes) if result.metrics is not None else []
    notes += list(result.region_accuracy.notes) if result.region_accuracy is not None else []
    for line in dict.fromkeys(notes):
        stderr_console.print(f"note: {line}", highlight=False, markup=False)
