"""The demo's steps: the exact `regionclip …` commands a user would type, in pipeline order.

The demo exists to teach the pipeline, so each step is a command line — printed, then run through
the same entry point as in a shell — and the file that step finishes with is what lets a rerun skip
it. As the paper, the teacher labels the regions an RPN proposes (the RPN learns from the base
shapes' boxes only) with the concepts of each image's captions. With random boxes and 80
iterations the student got 52 of 204 held-out boxes right against the teacher's 45; the RPN's 32
best regions, 160 iterations and the `world` recipe's distillation gave 64; its 8 best gave 70
(novel 51.0 vs 20.4 %): most of the 32 were background. Since the recipe's teacher labels at
224 px they give 68 (labelling the pseudo-label step at 224 px too: 68 again).
The demo's last line says how many boxes each model got right.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoConfig:
    """Where the demo writes, on what device, and how big it runs.

    `quick` is a smoke run for tests (well under a minute): every step runs, but too briefly for
    the student to learn anything, so its table is not evidence of the claim.
    """

    out: Path = Path("regionclip-demo")
    device: str = "auto"
    quick: bool = False


@dataclass(frozen=True)
class DemoSize:
    train_images: int
    eval_images: int
    min_count: int
    iterations: int
    batch_size: int
    pictures: int
    regions: int  # RPN regions per image, labelled by the teacher and trained on
    rpn_iterations: int
    lr: float  # the demo's 240 images take a tenth of the world recipe's lr (1e-3: 68 boxes, not 70)

    @property
    def schedule(self) -> tuple[str, ...]:
        """The lr; warm-up over the first tenth, lr x0.1 at 2/3 and 9/10 (the world recipe's steps)."""
        return ("--set", f"optimizer.lr={self.lr:g}",
                *_scaled_schedule(self.iterations, warmup=(1, 10), steps=((2, 3), (9, 10))))

    @property
    def rpn_schedule(self) -> tuple[str, ...]:
        """rpn-world's shape (warm-up 20 of 400, steps 250 and 350), scaled to the demo's run."""
        return _scaled_schedule(self.rpn_iterations, warmup=(1, 20), steps=((5, 8), (7, 8)))


def _scaled_schedule(iterations: int, *, warmup: tuple[int, int], steps: tuple[tuple[int, int], ...]
                     ) -> tuple[str, ...]:
    """`--set` overrides of the warm-up and the lr steps, each a fraction of `iterations` (at least 1)."""
    def at(fraction: tuple[int, int]) -> int:
        return max(1, iterations * fraction[0] // fraction[1])

    return ("--set", f"optimizer.warmup_iterations={at(warmup)}",
            "--set", f"optimizer.steps=[{','.join(str(at(f)) for f in steps)}]")


FULL = DemoSize(train_images=240, eval_images=60, min_count=10, iterations=160, batch_size=8, pictures=6,
                regions=8, rpn_iterations=200, lr=1e-4)
QUICK = DemoSize(train_images=8, eval_images=4, min_count=2, iterations=2, batch_size=4, pictures=2, regions=10,
                 rpn_iterations=2, lr=1e-4)
TRAIN_SEED = 2
EVAL_SEED = 0  # held out: the world-tiny teacher trained on other seeds, the student on TRAIN_SEED


@dataclass(frozen=True)
class Step:
    title: str
    argv: tuple[str, ...]
    done: Path  # exists once the step has finished: a rerun skips the step

    @property
    def command(self) -> str:
        return "regionclip " + " ".join(_quote(arg) for arg in self.argv)


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./=,:[]" for c in arg) else "'" + arg.replace("'", "'\\''") + "'"


def demo_steps(config: DemoConfig) -> list[Step]:
    size = QUICK if config.quick else FULL
    out = config.out
    world, held_out = out / "world", out / "eval"
    concepts, labels, run, rpn = out / "concepts", out / "pseudolabels", out / "pretrain", out / "rpn"
    device = ("--device", config.device)
    zeroshot = (
        "zeroshot", str(held_out / "images"), "--vocab", "world",
        "--boxes", str(held_out / "annotations.json"), "--gt", str(held_out / "annotations.json"),
        "--score-threshold", "0", "--nms", "1", "--save-vis", "--quiet", *device,
    )
    return [
        Step("A world to pretrain on: images and captions, no boxes used",
             ("world", "generate", str(world), "--images", str(size.train_images), "--seed", str(TRAIN_SEED), "--quiet"),
             world / "captions.jsonl"),
        Step("Held-out images with ground-truth boxes, for evaluation",
             ("world", "generate", str(held_out), "--images", str(size.eval_images), "--seed", str(EVAL_SEED), "--quiet"),
             held_out / "annotations.json"),
        Step("Region proposals: a class-agnostic RPN learns from the base shapes' boxes (labels "
             "ignored; novel shapes are never seen as boxes)",
             ("rpn", "rpn-world",
              "--set", f"data.train.annotations={world / 'annotations.json'}",
              "--set", f"data.train.images={world / 'images'}",
              "--set", f"data.test.annotations={held_out / 'annotations.json'}",
              "--set", f"data.test.images={held_out / 'images'}",
              "--set", f"train.iterations={size.rpn_iterations}", *size.rpn_schedule,
              "--set", f"output={rpn}", "--set", f"device={config.device}", "--quiet"),
             rpn / "rpn.pt"),
        Step("Concepts: the nouns of the captions, embedded by the teacher's text encoder",
             ("concepts", str(world / "captions.jsonl"), "--model", "world-tiny", "--min-count", str(size.min_count),
              "--workers", "1", "--out", str(concepts), "--quiet", *device),
             concepts / "concept_embeddings.pt"),
        Step("Pseudo labels: the frozen teacher names the RPN's regions, each with the concept of its "
             "image's captions it matches best",
             ("pseudolabel", str(world / "images"), "--concepts", str(concepts / "concept_embeddings.pt"),
              "--captions", str(world / "captions.jsonl"), "--model", "world-tiny",
              "--rpn", str(rpn / "rpn.pt"), "--regions", str(size.regions),
              "--out", str(labels), "--quiet", *device),
             labels / "summary.json"),
        Step("Pretraining: a student learns regions from the pseudo labels and the captions",
             ("pretrain", "world",
              "--set", f"concepts={concepts / 'concept_embeddings.pt'}",
              "--set", f"data.images={world / 'images'}", "--set", f"data.captions={world / 'captions.jsonl'}",
              "--set", f"pseudo_labels.precomputed={labels}", "--set", "proposals.source=random",
              "--set", f"proposals.regions_per_image={size.regions}",
              "--set", f"train.iterations={size.iterations}", "--set", f"train.batch_size={size.batch_size}",
              *size.schedule, "--set", f"output={run}",
              "--set", f"device={config.device}", "--quiet"),
             run / "student.pt"),
        Step("Zero-shot with the teacher: name each ground-truth box of the held-out images",
             (*zeroshot[:1], *zeroshot[1:], "--model", "world-tiny", "--out", str(out / "zeroshot-teacher")),
             out / "zeroshot-teacher" / "metrics.json"),
        Step("Zero-shot with the student, the same images, boxes and prompts",
             (*zeroshot, "--weights", str(run / "student.pt"), "--out", str(out / "zeroshot-student")),
             out / "zeroshot-student" / "metrics.json"),
    ]
