"""`regionclip world`: generate the synthetic world, train its tiny CLIP teacher, measure it.

The shipped teacher `regionclip_cli/assets/world-tiny.pt` was made by

    regionclip world teacher --out world-tiny.pt && cp world-tiny.pt regionclip_cli/assets/

(the defaults are its recipe, see `synthetic/teacher.py`: 3,000 tagging steps of 64 single-shape
images, 600 locked-image text steps and 600 CLIP steps with 3 shape-swapped hard negatives per
caption, seed 0, world seeds 1000003-1000004; the checkpoint records these settings and its
training time, 2,444 s on a 2-core CPU) and measured by `regionclip world evaluate-teacher`.
Reruns give the same weights on the same machine and torch, other weights elsewhere (README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    help=(
        "The synthetic world: coloured shapes on textured backgrounds with COCO boxes and "
        "human-style captions (base/novel split), and the tiny CLIP teacher trained on it. "
        "Used by the tests, the demo and benchmarks; no downloads needed."
    ),
    no_args_is_help=True,
)

@app.command()
def generate(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write images/, annotations.json and captions.jsonl into.")],
    images: Annotated[int, typer.Option("--images", "-n", min=1, help="Number of images.")] = 200,
    seed: Annotated[int, typer.Option(help="World seed: image i depends only on (seed, i); the teacher trained on seed 1000003.")] = 0,
    image_size: Annotated[int, typer.Option(min=64, help="Square image side in pixels (world-tiny resizes it to the size its checkpoint recommends).")] = 224,
    min_captions: Annotated[int, typer.Option(min=1, help="Fewest captions per image.")] = 3,
    max_captions: Annotated[int, typer.Option(min=1, help="Most captions per image.")] = 5,
    max_objects: Annotated[int, typer.Option(min=1, help="Most shapes per image (at least 1).")] = 6,
    min_object_size: Annotated[float, typer.Option(help="Smallest shape in pixels (longest box side); sizes are log-uniform up to half the image.")] = 14.0,
    workers: Annotated[int, typer.Option(min=0, help="Rendering processes; 0 = one per CPU core.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace the world in a non-empty folder (its images, annotations and captions).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Generate a world: PNG images, COCO annotations (with synonyms and base/novel split per
    category) and captions.jsonl. Deterministic from --seed.

    Example: regionclip world generate runs/world --images 2000
    """
    from rich.console import Console
    from rich.table import Table

    from regionclip_cli.synthetic.world import WorldConfig, generate_world

    config = WorldConfig(num_images=images, image_size=image_size, seed=seed, min_captions=min_captions,
                         max_captions=max_captions, max_objects=max_objects,
                         min_object_size=min_object_size, workers=workers)
    summary = generate_world(out_dir, config, progress=not quiet, overwrite=overwrite)
    table = Table(title=f"world written to {summary.out_dir}", show_header=False)
    table.add_row("images", f"{summary.num_images:,} ({image_size}×{image_size}, seed {seed})")
    table.add_row("objects", f"{summary.num_objects:,}")
    table.add_row("categories", f"{summary.num_base_categories} base + {summary.num_novel_categories} novel")
    table.add_row("captions", f"{summary.num_captions:,}")
    table.add_row("time", f"{summary.seconds:.1f} s ({summary.num_images / summary.seconds:,.0f} img/s)")
    Console().print(table)


@app.command()
def teacher(
    out: Annotated[Path, typer.Option(help="Checkpoint to write (never the one inside the package).")] = Path("world-tiny.pt"),
    tagging_steps: Annotated[int, typer.Option(min=0, help="Phase 1: single-shape images, a linear head and the shape their captions name.")] = 3000,
    locked_steps: Annotated[int, typer.Option(min=0, help="Phase 2: the image tower frozen, the text tower learns to meet it (LiT).")] = 600,
    clip_steps: Annotated[int, typer.Option(min=0, help="Phase 3: CLIP's image–caption loss on everything, at --clip-lr.")] = 600,
    batch_size: Annotated[int, typer.Option(min=2, help="Images per step (the contrastive batch in phases 2 and 3).")] = 64,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak AdamW learning rate of phases 1 and 2 (warmup, then cosine decay).")] = 2e-3,
    clip_lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate of phase 3.")] = 3e-4,
    hard_negatives: Annotated[int, typer.Option(min=0, help="Shape-swapped captions per caption in phases 2 and 3.")] = 3,
    seed: Annotated[int, typer.Option(help="Initialisation, batch-order and caption-sampling seed.")] = 0,
    pool_images: Annotated[int, typer.Option(min=2, help="Training images rendered per kind (single shapes, scenes), reused over epochs; 40,000 take about 2 GB each.")] = 40_000,
    min_object_size: Annotated[float, typer.Option(help="Smallest shape in the training images, in pixels of the 224-px world (the default world's is 14).")] = 32.0,
    threads: Annotated[int, typer.Option(min=0, help="CPU threads (0 = torch's default).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train the tiny CLIP teacher (open_clip config world-tiny) on world image–caption pairs,
    save it as a regionclip checkpoint and print its image and region top-1 on held-out worlds.

    The defaults are the shipped teacher's recipe: about 16 minutes on 2 CPU cores (median of 3
    runs), 2 minutes on an NVIDIA H200. Another machine or torch gives other weights.

    Example: regionclip world teacher --out runs/world-tiny.pt --tagging-steps 300
    """
    from regionclip_cli.core.devices import resolve_device
    from regionclip_cli.core.errors import RegionclipError
    from regionclip_cli.synthetic.teacher import TeacherConfig, shipped_teacher_path, train_and_save

    if out.resolve() == shipped_teacher_path().resolve():
        raise RegionclipError(f"--out {out} is the teacher shipped inside the package; write elsewhere "
                              f"(e.g. --out world-tiny.pt) and copy it there yourself if you mean to replace it")
    if out.exists() and not overwrite:
        raise RegionclipError(f"--out {out} exists; pass --overwrite to replace it, or name another file")
    if out.is_dir():
        raise RegionclipError(f"--out {out} is a folder; name the checkpoint file to write")
    torch_device = resolve_device(device)
    config = TeacherConfig(tagging_steps=tagging_steps, locked_steps=locked_steps, clip_steps=clip_steps,
                           batch_size=batch_size, lr=lr, clip_lr=clip_lr, hard_negatives=hard_negatives, seed=seed,
                           pool_images=pool_images, min_object_size=min_object_size, threads=threads)
    config.check()
    seconds = train_and_save(out, config, torch_device, progress=not quiet)
    _print_evaluation(out, torch_device, f"teacher written to {out} ({seconds:.0f} s training)")


@app.command("evaluate-teacher")
def evaluate_teacher(
    weights: Annotated[Optional[Path], typer.Option(help="A world-tiny checkpoint (teacher or pretrained student); default: the shipped teacher.")] = None,
    images: Annotated[int, typer.Option(min=1, help="Single-shape images for image top-1.")] = 400,
    region_images: Annotated[int, typer.Option(min=1, help="Default-world images (about 3.6 boxes each) for region top-1.")] = 200,
    image_seed: Annotated[int, typer.Option(help="World seed of the single-shape images.")] = 7,
    image_min_object_size: Annotated[float, typer.Option(min=4.0, help="Smallest shape of the single-shape images, in pixels of the 224-px world (14 admits every size).")] = 40.0,
    region_seed: Annotated[int, typer.Option(help="World seed of the cluttered images.")] = 0,
    input_size: Annotated[Optional[int], typer.Option(min=32, help="Square input size the images are resized to. [default: the checkpoint's, 128 for world-tiny; the world is drawn at 224]")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
) -> None:
    """Image vs region recognition of a world CLIP on held-out worlds: zero-shot top-1 of whole
    single-shape images, and of ground-truth boxes in cluttered images (all, base, novel, by
    size), against the 20 category names. Chance is 5% everywhere.

    Example: regionclip world evaluate-teacher --weights runs/world-pretrain/student.pt
    """
    from regionclip_cli.core.devices import resolve_device
    from regionclip_cli.synthetic.evaluation import EvaluationConfig

    config = EvaluationConfig(image_count=images, region_images=region_images, image_seed=image_seed,
                              region_seed=region_seed, image_min_object_size=image_min_object_size,
                              input_size=input_size)
    _print_evaluation(weights, resolve_device(device), f"{weights or 'shipped world-tiny'}", config, json_out)


def _print_evaluation(weights: Optional[Path], device, title: str, config=None, json_out: Optional[Path] = None) -> None:
    """Evaluate a world-tiny checkpoint (None: the shipped one) and print one table."""
    from rich.console import Console
    from rich.table import Table

    from regionclip_cli.core.atomic import write_json
    from regionclip_cli.modeling.clip import load_clip
    from regionclip_cli.synthetic.evaluation import EvaluationConfig, evaluate_world_clip

    clip = load_clip("world-tiny" if weights is None else None, weights=weights, device=device)
    figures = evaluate_world_clip(clip, config or EvaluationConfig())
    if json_out is not None:
        write_json(json_out, figures, indent=2)
    columns = ("all", "base", "novel", "small", "medium", "large")
    image, region = figures["image"], figures["region"]
    table = Table(title=f"{title}\nzero-shot top-1 on held-out worlds at {figures['input_size']} px "
                        f"(chance {figures['chance']:.0%})")
    table.add_column("")
    for name in columns:
        table.add_column(name, justify="right")
    table.add_row("image", *((f"{image[k]['top1']:.1%}" if image[k]["count"] else "-") if k in image else ""
                             for k in columns))
    table.add_row("region", *(f"{region[k]['top1']:.1%}" if region[k]["count"] else "-" for k in columns))
    table.caption = (f"image: {image['all']['count']} single-shape images (seed {figures['config']['image_seed']}, "
                     f"shapes of at least {figures['config']['image_min_object_size']:g} px); "
                     f"region: {region['all']['count']} ground-truth boxes of default-world images (seed "
                     f"{figures['config']['region_seed']}), {region['small']['count']} small, "
                     f"{region['medium']['count']} medium, {region['large']['count']} large")
    Console().print(table)
