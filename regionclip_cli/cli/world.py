"""`regionclip world`: generate the synthetic world and train its tiny CLIP teacher.

The shipped teacher `regionclip_cli/data/world-tiny.pt` is rebuilt exactly by

    regionclip world teacher

(defaults: 500 steps of 32 fresh world images, lr 5e-4, seed 0, world seed 1000003, one
thread; 4-9 minutes on a shared 2-core CPU, depending on the other load). It is written in fp16 with metadata "dtype": "float16".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help=(
        "The synthetic world: coloured shapes on textured backgrounds with COCO boxes and "
        "human-style captions (base/novel split), and the tiny CLIP teacher trained on it. "
        "Used by the tests, the demo and benchmarks; no downloads needed."
    ),
    no_args_is_help=True,
)

DEFAULT_TEACHER = Path(__file__).resolve().parent.parent / "assets" / "world-tiny.pt"


@app.command()
def generate(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write images/, annotations.json and captions.jsonl into.")],
    images: Annotated[int, typer.Option("--images", "-n", min=1, help="Number of images.")] = 200,
    seed: Annotated[int, typer.Option(help="World seed: image i depends only on (seed, i); the teacher trained on seed 1000003.")] = 0,
    image_size: Annotated[int, typer.Option(min=64, help="Square image side in pixels (224 is what world-tiny sees).")] = 224,
    min_captions: Annotated[int, typer.Option(min=1, help="Fewest captions per image.")] = 3,
    max_captions: Annotated[int, typer.Option(min=1, help="Most captions per image.")] = 5,
    max_objects: Annotated[int, typer.Option(min=1, help="Most shapes per image (at least 1).")] = 6,
    min_object_size: Annotated[float, typer.Option(help="Smallest shape in pixels (longest box side); sizes are log-uniform up to half the image.")] = 14.0,
    workers: Annotated[int, typer.Option(min=0, help="Rendering processes; 0 = one per CPU core.")] = 0,
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
    summary = generate_world(out_dir, config, progress=not quiet)
    table = Table(title=f"world written to {summary.out_dir}", show_header=False)
    table.add_row("images", f"{summary.num_images:,} ({image_size}×{image_size}, seed {seed})")
    table.add_row("objects", f"{summary.num_objects:,}")
    table.add_row("categories", f"{summary.num_base_categories} base + {summary.num_novel_categories} novel")
    table.add_row("captions", f"{summary.num_captions:,}")
    table.add_row("time", f"{summary.seconds:.1f} s ({summary.num_images / summary.seconds:,.0f} img/s)")
    Console().print(table)


@app.command()
def teacher(
    out: Annotated[Path, typer.Option(help="Checkpoint to write (default: the shipped teacher, rebuilt).")] = DEFAULT_TEACHER,
    steps: Annotated[int, typer.Option(min=1, help="Training steps, both phases (each step sees a fresh batch of world images).")] = 3000,
    naming_steps: Annotated[int, typer.Option(min=0, help="Phase 1 steps: max-pool head and captions that only name the shapes (the attention pool alone does not learn shapes on a CPU budget).")] = 2000,
    batch_size: Annotated[int, typer.Option(min=2, help="Image–caption pairs per step (the contrastive batch).")] = 32,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak AdamW learning rate (warmup, then cosine decay, per phase).")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Initialisation and caption-sampling seed.")] = 0,
    max_objects: Annotated[int, typer.Option(min=1, help="Most shapes per training image.")] = 2,
    min_object_size: Annotated[float, typer.Option(help="Smallest shape in the training images, in pixels (the default world's is 14).")] = 40.0,
    threads: Annotated[int, typer.Option(min=0, help="CPU threads (1 is fastest on a busy machine; 0 = torch's default).")] = 1,
    eval_images: Annotated[int, typer.Option(min=10, help="Held-out world images (seed 0) for the retrieval figures.")] = 300,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train the tiny CLIP teacher (open_clip config world-tiny) on world image–caption pairs,
    save it as a regionclip checkpoint and print whole-image retrieval and zero-shot figures on
    held-out images.

    Example: regionclip world teacher --out runs/world-tiny.pt --steps 300 --naming-steps 200
    """
    from rich.console import Console
    from rich.table import Table

    from regionclip_cli.core.devices import resolve_device
    from regionclip_cli.synthetic.teacher import TeacherConfig, caption_retrieval, load_teacher, train_and_save

    torch_device = resolve_device(device)
    config = TeacherConfig(steps=steps, naming_steps=naming_steps, batch_size=batch_size, lr=lr, seed=seed,
                           threads=threads, max_objects=max_objects, min_object_size=min_object_size)
    seconds = train_and_save(out, config, torch_device, progress=not quiet)
    figures = caption_retrieval(load_teacher(out, torch_device), eval_images, device=torch_device)
    table = Table(title=f"teacher written to {out} ({seconds:.0f} s training)")
    table.add_column("held-out world images (seed 0)")
    table.add_column("value", justify="right")
    for key in ("image_to_caption_r1", "image_to_caption_r5", "caption_to_image_r1", "caption_to_image_r5",
                "zeroshot_accuracy", "zeroshot_accuracy_base", "zeroshot_accuracy_novel", "chance_accuracy"):
        table.add_row(key.replace("_", " "), f"{figures[key]:.3f}")
    Console().print(table)
