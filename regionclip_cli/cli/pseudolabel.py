"""`regionclip pseudolabel`: the teacher's concept labels for proposed regions, written to disk."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def pseudolabel(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).", show_default=False)],
    concepts: Annotated[Path, typer.Option(help="concept_embeddings.pt written by `regionclip concepts` for the same teacher.")],
    out: Annotated[Path, typer.Option(help="Output folder: shards/*.jsonl, manifest.json, summary.json, pictures/.")] = Path("runs/pseudolabels"),
    model: Annotated[Optional[str], typer.Option(help="Teacher: open_clip model name (ResNet family; world-tiny for the synthetic world). [default: RN50, or the model a --weights checkpoint names]", show_default=False)] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="Teacher's open_clip pretrained tag, e.g. openai.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Teacher's local weights file.")] = None,
    boxes: Annotated[Optional[Path], typer.Option(help="Proposals from a file (COCO JSON, {file: boxes} JSON or JSON Lines) instead of random boxes.")] = None,
    regions: Annotated[int, typer.Option(min=1, help="Regions per image (random boxes, or sampled from --boxes).")] = 100,
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
    from regionclip_cli.core.devices import resolve_device
    from regionclip_cli.core.errors import RegionclipError
    from regionclip_cli.data.images import find_images
    from regionclip_cli.modeling.clip import load_clip
    from regionclip_cli.core.progress import progress_bar, stderr_console
    from regionclip_cli.data.proposals import BoxFile, ProposalSource, RandomBoxConfig
    from regionclip_cli.data.pseudolabel_shards import ShardedLabels, ShardConfig, digest
    from regionclip_cli.stages.pseudolabel.labeler import PseudoLabeler, LabelRuleConfig, label_records
    from regionclip_cli.modeling.text import check_matches, load_text_embeddings
    from regionclip_cli.stages.zeroshot.run import resize_for

    paths, missing = find_images(images)
    if not paths:
        raise RegionclipError("no images to label: " + "; ".join(missing or ["no inputs given"]))
    pool = load_text_embeddings(concepts)
    box_file = BoxFile(boxes) if boxes is not None else None
    clip = load_clip(model, pretrained=pretrained, weights=weights, device=resolve_device(device))
    check_matches(pool, clip, origin=f"--concepts {concepts}")
    settings = ShardConfig(
        model_identity=clip.identity, concepts=digest(pool.names),
        proposals=f"file:{boxes.resolve()}" if boxes else "random",
        regions_per_image=regions, threshold=threshold, temperature=temperature, seed=seed,
        shard_size=shard_size, images=digest([str(p.resolve()) for p in paths]))
    shards = ShardedLabels(out, settings, paths, overwrite=overwrite)
    labeler = PseudoLabeler(clip, pool.embeddings, LabelRuleConfig(threshold, temperature))
    resize = resize_for(clip, min_size, max_size)
    proposals = ProposalSource(box_file, RandomBoxConfig(count=regions, seed=seed), max_boxes=regions)
    box_problems: list[str] = []

    for problem in missing:
        stderr_console.print(f"[red]error:[/] {problem}", highlight=False)
    pending = shards.pending()
    done_images = len(paths) - sum(len(shards.shard_images(i)) for i in pending)
    if done_images:
        stderr_console.print(f"resuming: {shards.num_shards - len(pending)} of {shards.num_shards} shards already written")
    with progress_bar(disable=quiet) as bar:
        task = bar.add_task("pseudolabel", total=len(paths), completed=done_images, unit="img", status="")
        for index in pending:
            shard_paths = shards.shard_images(index)
            records = label_records(labeler, shard_paths, proposals, resize=resize, batch_size=batch_size,
                                    concept_names=pool.names, problems=box_problems)
            shards.write_shard(index, records)
            bar.update(task, advance=len(shard_paths), status=f"shard {index + 1}/{shards.num_shards}")
    summary = shards.summary()
    failures = [r for r in shards.records() if "error" in r]
    for record in failures:
        stderr_console.print(f"[red]skipped[/] {record['error']}", highlight=False)
    for problem in box_problems:
        stderr_console.print(f"[yellow]warning:[/] {problem}", highlight=False)
    from regionclip_cli.core.atomic import write_json

    write_json(out / "summary.json", summary, indent=2)
    if pictures:
        from regionclip_cli.stages.pseudolabel.pictures import draw_labelled_records

        draw_labelled_records(shards.records(), out / "pictures", limit=pictures)
    _render(summary, out)
    raise typer.Exit(1 if failures or missing or box_problems else 0)


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
