"""`regionclip pseudolabel`: the teacher's concept labels for proposed regions, written to disk."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape


def pseudolabel(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).", show_default=False)],
    concepts: Annotated[Path, typer.Option(help="concept_embeddings.pt written by `regionclip concepts` for the same teacher.")],
    out: Annotated[Path, typer.Option(help="Output folder: shards/*.jsonl, manifest.json, summary.json, pictures/.")] = Path("runs/pseudolabels"),
    model: Annotated[Optional[str], typer.Option(help="Teacher: open_clip model name (ResNet family; world-tiny for the synthetic world). [default: the teacher --concepts was embedded with, or the model a --weights checkpoint names]", show_default=False)] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="Teacher's open_clip pretrained tag, e.g. openai.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Teacher's local weights file.")] = None,
    boxes: Annotated[Optional[Path], typer.Option(help="Proposals from a file (COCO JSON, {file: boxes} JSON or JSON Lines) instead of random boxes.")] = None,
    rpn: Annotated[Optional[Path], typer.Option(help="Proposals from this RPN checkpoint (`regionclip rpn`): its --regions best boxes after NMS at --rpn-nms.")] = None,
    rpn_nms: Annotated[float, typer.Option(min=0.0, max=1.0, help="NMS IoU of --rpn's proposals (pretrain's rpn_nms_threshold).")] = 0.5,
    captions: Annotated[Optional[Path], typer.Option(help="Captions (JSON Lines or COCO captions) of the images: label each image's regions only with the concepts its own captions name, not the whole pool (the original's rule); the softmax and --threshold are then over those concepts. pretrain: pseudo_labels.candidates: captions.")] = None,
    regions: Annotated[int, typer.Option(min=1, help="Regions per image (random boxes, sampled from --boxes, or --rpn's best).")] = 100,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Regions whose top-1 probability is at most this are marked keep=false (all kept if none pass).")] = 0.1,
    temperature: Annotated[float, typer.Option(min=1e-6, help="Teacher softmax temperature over the pool.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of the random boxes.")] = 0,
    shard_size: Annotated[int, typer.Option(min=1, help="Images per shard file (the unit of resumption).")] = 256,
    min_size: Annotated[Optional[int], typer.Option(min=16, help="Short side the teacher sees [default: the checkpoint's, else 800].")] = None,
    max_size: Annotated[Optional[int], typer.Option(min=16, help="Long side limit [default: the checkpoint's, else 1333].")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 1,
    pictures: Annotated[int, typer.Option(min=0, help="Draw this many images with their labelled regions to OUT/pictures.")] = 8,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace labels in OUT made with other settings.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Label proposed regions with the frozen teacher's best concept, for inspection and reuse.

    Each region is scored against every concept of the pool (cosine / temperature, softmax over
    the pool); the top-1 concept is its pseudo label. Output is sharded: rerunning the same
    command after an interruption writes only the missing shards. `pretrain` computes the same
    labels on the fly by default.

    Exit codes: 0 all images labelled; 1 some images failed (named on stderr); 2 usage error.
    """
    from regionclip_cli.core.progress import progress_bar, stderr_console
    from regionclip_cli.stages import pseudolabel as stage
    from regionclip_cli.stages.pseudolabel.labeler import LabelRuleConfig

    config = stage.PseudoLabelConfig(
        images=images, concepts=concepts, out=out, model=model, pretrained=pretrained, weights=weights,
        boxes=boxes, rpn=rpn, rpn_nms=rpn_nms, captions=captions, regions=regions, rule=LabelRuleConfig(threshold, temperature), seed=seed,
        shard_size=shard_size, min_size=min_size, max_size=max_size, batch_size=batch_size,
        pictures=pictures, overwrite=overwrite, device=device)

    class BarReporter(stage.Reporter):
        def start(self, total: int, done: int) -> None:
            if done:
                stderr_console.print(f"resuming: {done} of {total} images already labelled")
            self.task = bar.add_task("pseudolabel", total=total, completed=done, unit="img", status="")

        def shard_done(self, images: int, index: int, total: int) -> None:
            bar.update(self.task, advance=images, status=f"shard {index + 1}/{total}")

    with progress_bar(disable=quiet) as bar:
        try:
            result = stage.run(config, BarReporter())
        except stage.PseudoLabelInterrupted as interrupted:
            bar.stop()
            typer.echo(f"interrupted: {interrupted}", err=True)
            raise typer.Exit(130) from None
    for line in result.failures:
        stderr_console.print(f"[red]skipped[/] {escape(line)}", highlight=False)
    for line in result.warnings:
        stderr_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    for line in result.notes:
        stderr_console.print(f"note: {escape(line)}", highlight=False)
    _render(result.summary, result.out)
    raise typer.Exit(result.exit_code)


def _render(summary: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pseudolabel", show_header=False, title_justify="left")
    table.add_row("images labelled", str(summary["images"]))
    table.add_row("failed images", str(summary["failed_images"]))
    table.add_row("regions", str(summary["regions"]))
    table.add_row("mean top-1 probability", f"{summary['mean_top1_probability']:.3f}")
    table.add_row("kept for contrast", f"{100 * summary['kept_fraction']:.1f}%")
    table.add_row("distinct labels", str(summary["distinct_labels"]))
    top = ", ".join(f"{k} ({v})" for k, v in list(summary["label_histogram"].items())[:8])
    table.add_row("most frequent", top)
    table.add_row("outputs", f"{out}/shards, {out}/summary.json, {out}/pictures")
    Console().print(table)
