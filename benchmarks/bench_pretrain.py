"""Pretraining throughput: images/s of the real engine step (`Trainer.step` of a `PretrainTask`), and where the time goes.

The paper trained RN50 at 800x1333 with 100 regions per image at about 3.5 images/s per V100
(600k iterations x 96 images in 6 days on 32 GPUs); the issue's target is 30x that on one H100.
No pretrained weights exist offline, so this script builds a throw-away workspace in a temp dir:
a random-init RN50 saved as the teacher's weights file, a concept pool of synthetic names embedded
with that teacher's text tower ("{}." template; cached by `embed_names`, so reruns skip it),
smooth random JPEGs of 1000x600 that the data path bicubic-upscales to 1333x800 (so decode and
resize cost what they would on COCO-sized photos), and a captions JSONL. Throughput does not
depend on the weights being trained, only on shapes.

It then runs the lead's step unchanged: warm-up steps (allocator, oneDNN/cuDNN choices), then timed
steps (median wall seconds and process CPU seconds, which neighbours on a shared machine disturb
less). With `--profile` it instruments further steps and reports the exclusive wall time of each
phase: data (decode, resize, tensor, pad), teacher and student trunk / RoIAlign / res5 /
attention pool, pseudo labels, caption encoding, each loss, backward split by the same stages,
grad clipping and the SGD step. Instrumentation wraps the functions the step calls (patched only in
this process, after the timed steps) and synchronises the device at every boundary; backward is
split by identity autograd nodes whose backward records when the gradient reaches them.

    python benchmarks/bench_pretrain.py --concepts 1000 --profile          # CPU: batch 2, 3 steps
    python benchmarks/bench_pretrain.py --device cuda --amp bf16 --channels-last --batch-size 16 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import random
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator
from unittest import mock

import torch
from PIL import Image, ImageDraw

from regionclip_cli.stages.pretrain import batches as batches_module
from regionclip_cli.stages.pretrain import task as task_module
from regionclip_cli.modeling import batchnorm_folding
from regionclip_cli.modeling import region_encoder as region_encoder_module
from regionclip_cli.modeling.clip import load_clip
from regionclip_cli.stages.pretrain.recipe import (DataConfig, PretrainConfig, PretrainTrainConfig, ProposalsConfig,
                                                   TeacherConfig)
from regionclip_cli.stages.pretrain.task import PretrainTask
from regionclip_cli.modeling.text import embed_names, save_text_embeddings
from regionclip_cli.engine.distributed import DistributedContext
from regionclip_cli.engine.loop import Trainer
from regionclip_cli.engine.task import Runtime, autocast_dtype_for

from machine import add_training_step_options, device_name, synchronize  # benchmarks/machine.py (scripts run from benchmarks/)

PAPER_IMAGES = 600_000 * 96
PAPER_SECONDS_PER_GPU = 6 * 86_400 * 32
PAPER_RATE = 3.5  # images/s per V100: PAPER_IMAGES / PAPER_SECONDS_PER_GPU = 3.47
TARGET_RATIO = 30  # the target for one H100
SOURCE_SIZE = (1000, 600)  # upscaled by the data path to exactly 1333x800


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_step_options(parser)
    parser.add_argument("--channels-last", action="store_true", help="teacher, student and images channels_last")
    parser.add_argument("--regions", type=int, default=100, help="random regions per image")
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--concepts", type=int, default=4764, help="concept pool size (the paper's COCO pool: 4,764)")
    parser.add_argument("--images", type=int, default=8, help="distinct JPEGs in the workspace (cycled)")
    parser.add_argument("--loader-workers", type=int, default=2, help="train.loader_workers: decode/resize threads")
    parser.add_argument("--profile", action="store_true", help="instrument extra steps: time per phase")
    parser.add_argument("--profile-steps", type=int, default=1, help="steps the phase profile sums over")
    parser.add_argument("--op-table", type=int, default=0, metavar="N",
                        help="also run one step under torch.profiler and print its top N ops by self time")
    parser.add_argument("--flops", action="store_true",
                        help="count the FLOPs of one step (torch FlopCounterMode: convs and matmuls, fwd + bwd)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads [default: torch's]")
    parser.add_argument("--baseline", action="store_true",
                        help="also time, interleaved, the step without its exact shortcuts (teacher batch norm "
                             "folded, student taking the teacher's layer1) and print the ratio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return parser.parse_args()


# --- workspace ---------------------------------------------------------------------------------

def write_image(path: Path, rng: random.Random) -> None:
    """A smooth picture of random shapes: JPEG-decodes like a photo, unlike pure noise."""
    image = Image.new("RGB", SOURCE_SIZE, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    width, height = SOURCE_SIZE
    for _ in range(40):
        x1, y1 = rng.randrange(width), rng.randrange(height)
        x2, y2 = x1 + rng.randrange(20, width // 2), y1 + rng.randrange(20, height // 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x1, y1, x2, y2], fill=tuple(rng.randrange(256) for _ in range(3)))
    image.save(path, quality=90)


def build_workspace(root: Path, args: argparse.Namespace, device: torch.device) -> tuple[PretrainConfig, float]:
    """Teacher weights, concept embeddings, images and captions; returns the recipe and embedding seconds."""
    torch.manual_seed(args.seed)  # same weights file every run, so embed_names' cache hits on reruns
    weights = root / "teacher.pt"
    torch.save(load_clip(args.model, random_init=True).model.state_dict(), weights)
    teacher = load_clip(args.model, weights=weights, device=device)
    names = [f"concept {i}" for i in range(args.concepts)]
    templates = ["{}."]
    started = time.perf_counter()
    embeddings = embed_names(teacher, names, templates, batch_size=128, progress=True)
    embed_seconds = time.perf_counter() - started
    concepts = root / "concepts.pt"
    save_text_embeddings(concepts, names, embeddings, teacher, templates)
    del teacher

    images = root / "images"
    images.mkdir()
    rng = random.Random(args.seed)
    rows = []
    for index in range(args.images):
        name = f"image_{index:03d}.jpg"
        write_image(images / name, rng)
        picks = [rng.randrange(args.concepts) for _ in range(6)]
        rows.append({"file": name, "captions": [
            f"a photo of {names[picks[0]]} next to {names[picks[1]]}.",
            f"{names[picks[2]]} and a {names[picks[3]]} on the {names[picks[4]]}.",
            f"there is a {names[picks[5]]} in the picture.",
        ]})
    captions = root / "captions.jsonl"
    captions.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")

    recipe = PretrainConfig(
        teacher=TeacherConfig(model=args.model, weights=weights),
        concepts=concepts,
        data=DataConfig(images=images, captions=captions),
        proposals=ProposalsConfig(regions_per_image=args.regions),
        train=PretrainTrainConfig(iterations=args.warmup + args.steps + args.profile_steps + 2,
                                  batch_size=args.batch_size, min_size=args.min_size, max_size=args.max_size,
                                  amp=args.amp, channels_last=args.channels_last, seed=args.seed,
                                  loader_workers=args.loader_workers),
        output=root / "run",
        device=str(device),
    )
    return recipe, embed_seconds


def make_trainer(recipe: PretrainConfig, device: torch.device, log=lambda message: None) -> Trainer:
    """The engine around a pretraining task, in this process."""
    runtime = Runtime(DistributedContext(0, 1, device), autocast_dtype_for(recipe.train.amp, device))
    task = PretrainTask.from_recipe(recipe, runtime, log)
    return Trainer(task, runtime, train=recipe.train, optimizer=recipe.optimizer)


# --- timing ------------------------------------------------------------------------------------

def timed_step(run: Trainer, iteration: int, device: torch.device) -> tuple[float, float, dict]:
    """(wall, process CPU) seconds of one step; the step itself reads its losses back, so it ends synced."""
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    stats = run.step(iteration)
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu, stats


class _BackwardMark(torch.autograd.Function):
    """Identity whose backward notes the moment the gradient reaches it (a phase boundary)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, clock: "PhaseClock", phase: str) -> torch.Tensor:
        ctx.clock, ctx.phase = clock, phase
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.clock.mark(ctx.phase)
        return grad, None, None


class PhaseClock:
    """Exclusive wall seconds per phase (a nested phase's time is not counted in its parent).

    Forward phases are timed around the calls; backward is one autograd call, so it is cut by
    marks: each `mark(phase)` ends the running backward phase and starts `phase`.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)
        self._children: list[float] = []
        self._backward: tuple[str, float] | None = None

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = self.now()
        self._children.append(0.0)
        try:
            yield
        finally:
            elapsed = self.now() - start
            self.totals[name] += elapsed - self._children.pop()
            if self._children:
                self._children[-1] += elapsed

    def wrap(self, fn: Callable, name: str | Callable[..., str]) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self.phase(name(*args, **kwargs) if callable(name) else name):
                return fn(*args, **kwargs)
        return timed

    def backward_mark(self, tensor: torch.Tensor, phase: str) -> torch.Tensor:
        if not (torch.is_grad_enabled() and tensor.requires_grad):
            return tensor
        return _BackwardMark.apply(tensor, self, phase)

    def mark(self, phase: str) -> None:
        now = self.now()
        if self._backward is not None:
            running, since = self._backward
            self.totals[running] += now - since
        self._backward = (phase, now)

    def end_backward(self) -> None:
        self.mark("unused")
        self._backward = None


@contextlib.contextmanager
def instrumented(run: Trainer, clock: PhaseClock) -> Iterator[None]:
    """Patch the functions the step calls (this process only) so that each reports its phase."""
    task = run.task
    teacher_visual, student_visual = task.teacher.model.visual, task.student_visual

    def owner(visual_part) -> str:
        return "teacher" if visual_part is teacher_visual.attnpool or visual_part is teacher_visual.layer4 else "student"

    def marked(fn: Callable, before: str | None, after: str | None) -> Callable:
        """`fn` with backward marks: the gradient reaching its output starts phase `after`, the one
        reaching its first input (i.e. `fn`'s backward is done) starts phase `before`."""
        @functools.wraps(fn)
        def call(first, *args, **kwargs):
            if before is not None:
                first = clock.backward_mark(first, before)
            out = fn(first, *args, **kwargs)
            return clock.backward_mark(out, after) if after is not None else out
        return call

    # RoIAlign: backward starts when the gradient reaches layer4's input (the RoIAlign output).
    def roi_align(features, boxes, *args, **kwargs):
        who = "student" if features.requires_grad and torch.is_grad_enabled() else "teacher"
        with clock.phase(f"{who} RoIAlign"):
            return original_roi_align(features, boxes, *args, **kwargs)

    def attention_pool(pool, features):
        who = owner(pool)
        with clock.phase(f"{who} attention pool"):
            out = original_attention_pool(pool, features)
        return clock.backward_mark(out, "bwd: student attention pool")

    def optimizer_zero_grad(*args, **kwargs):
        with clock.phase("optimiser: zero_grad"):
            original_zero_grad(*args, **kwargs)
        clock.mark("bwd: losses, normalise, split")

    def scaler_unscale(*args, **kwargs):
        clock.end_backward()
        return original_unscale(*args, **kwargs)

    original_roi_align = region_encoder_module.roi_align
    original_attention_pool = region_encoder_module.attention_pool
    original_zero_grad = run.optimizer.zero_grad
    original_unscale = run.scaler.unscale_
    student_trunk = marked(task.student.trunk, None, "bwd: student trunk")
    patches = [
        mock.patch.object(region_encoder_module, "roi_align", roi_align),
        mock.patch.object(region_encoder_module, "attention_pool", attention_pool),
        mock.patch.object(batches_module, "load_image", clock.wrap(batches_module.load_image, "data: JPEG decode")),
        mock.patch.object(batches_module, "resize_for_model",
                          clock.wrap(batches_module.resize_for_model, "data: bicubic resize")),
        mock.patch.object(batches_module, "to_model_tensor",
                          clock.wrap(batches_module.to_model_tensor, "data: to tensor + normalise")),
        mock.patch.object(batches_module, "pad_batch", clock.wrap(batches_module.pad_batch, "data: pad batch")),
        mock.patch.object(task_module, "assign_pseudo_labels",
                          clock.wrap(task_module.assign_pseudo_labels, "pseudo labels (teacher x pool)")),
        mock.patch.object(task_module, "region_concept_contrastive",
                          clock.wrap(task_module.region_concept_contrastive, "loss: region-concept")),
        mock.patch.object(task_module, "concept_distillation",
                          clock.wrap(task_module.concept_distillation, "loss: distillation")),
        mock.patch.object(task_module, "image_text_contrastive",
                          clock.wrap(task_module.image_text_contrastive, "loss: image-text")),
        mock.patch.object(torch.nn.utils, "clip_grad_norm_",
                          clock.wrap(torch.nn.utils.clip_grad_norm_, "optimiser: grad-norm clip")),
        mock.patch.object(task.batches, "build", clock.wrap(task.batches.build, "data: boxes, captions, other")),
        mock.patch.object(task, "_caption_embeddings", clock.wrap(task._caption_embeddings, "text: caption encoding")),
        mock.patch.object(task.teacher_encoder, "layer1", clock.wrap(task.teacher_encoder.layer1, "teacher trunk: stem + layer1")),
        mock.patch.object(task.teacher_encoder, "trunk", clock.wrap(task.teacher_encoder.trunk, "teacher trunk")),
        mock.patch.object(task.teacher_encoder, "pool", clock.wrap(task.teacher_encoder.pool, "teacher pool: other")),
        mock.patch.object(task.student, "trunk", clock.wrap(student_trunk, "student trunk")),
        mock.patch.object(task.student, "pool", clock.wrap(task.student.pool, "student pool: other")),
        mock.patch.object(teacher_visual.layer4, "forward", clock.wrap(teacher_visual.layer4.forward, "teacher res5 (layer4)")),
        mock.patch.object(student_visual.layer4, "forward", clock.wrap(
            marked(student_visual.layer4.forward, "bwd: student RoIAlign", "bwd: student res5 (layer4)"),
            "student res5 (layer4)")),
        mock.patch.object(run.optimizer, "zero_grad", optimizer_zero_grad),
        mock.patch.object(run.optimizer, "step", clock.wrap(run.optimizer.step, "optimiser: SGD step")),
        mock.patch.object(run.scaler, "unscale_", scaler_unscale),
    ]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


# Which of the categories each phase belongs to.
CATEGORIES = {
    "data (decode, resize, batch)": ("data:",),
    "trunk (stem..layer3)": ("teacher trunk", "student trunk", "bwd: student trunk"),
    "RoIAlign": ("teacher RoIAlign", "student RoIAlign", "bwd: student RoIAlign", "teacher pool: other",
                 "student pool: other"),
    "res5 + attention pool": ("teacher res5", "student res5", "teacher attention pool", "student attention pool",
                              "bwd: student res5", "bwd: student attention pool"),
    "text side (captions)": ("text:",),
    "pseudo labels + losses (fwd + bwd)": ("pseudo labels", "loss:", "bwd: losses"),
    "optimiser (zero_grad, clip, SGD)": ("optimiser:",),
}


def category_of(phase: str) -> str:
    for category, prefixes in CATEGORIES.items():
        if phase.startswith(prefixes):
            return category
    return "other (copies, stats, glue)"


def profile_phases(run: Trainer, iterations: range, device: torch.device) -> tuple[dict, float]:
    """Per-phase seconds per step, and the instrumented step's wall seconds per step."""
    clock = PhaseClock(device)
    total = 0.0
    with instrumented(run, clock):
        for iteration in iterations:
            wall, _, _ = timed_step(run, iteration, device)
            total += wall
    steps = len(iterations)
    phases = {name: seconds / steps for name, seconds in clock.totals.items() if name != "unused"}
    phases["other (copies, stats, glue)"] = total / steps - sum(phases.values())
    return phases, total / steps


def print_table(title: str, rows: dict[str, float], step_seconds: float, batch_size: int) -> None:
    header = f"{title:<40} | {'s/step':>8} | {'ms/image':>8} | {'share':>6}"
    print(header)
    print("-" * len(header))
    for name, seconds in sorted(rows.items(), key=lambda kv: -kv[1]):
        print(f"{name:<40} | {seconds:>8.3f} | {1000 * seconds / batch_size:>8.1f} | "
              f"{100 * seconds / step_seconds:>5.1f}%")


def print_profile(phases: dict[str, float], step_seconds: float, batch_size: int) -> None:
    print(f"\nphase profile: exclusive wall time per step (instrumented step {step_seconds:.3f} s; "
          "device synchronised at every boundary)")
    print_table("phase", phases, step_seconds, batch_size)
    grouped: dict[str, float] = defaultdict(float)
    for name, seconds in phases.items():
        grouped[category_of(name)] += seconds
    print("\nby category, forward and backward together:")
    print_table("category", grouped, step_seconds, batch_size)


def print_op_table(run: Trainer, iteration: int, device: torch.device, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        timed_step(run, iteration, device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\ntorch.profiler, one step, top {rows} ops by {key}:")
    print(prof.key_averages().table(sort_by=key, row_limit=rows))


def count_flops(run: Trainer, iteration: int, device: torch.device) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        timed_step(run, iteration, device)
    return counter.get_total_flops()


def unshortcut_run(recipe: PretrainConfig, device: torch.device) -> Trainer:
    """The same run without its exact shortcuts: the teacher keeps separate batch norm layers
    and the student recomputes the stem and layer1 (the step before those were added)."""
    with mock.patch.object(batchnorm_folding, "fold_batchnorm", lambda tower: 0):
        run = make_trainer(recipe, device)
    run.task.shares_layer1 = False
    return run


def compare_with_baseline(run: Trainer, recipe: PretrainConfig, device: torch.device,
                          first_iteration: int, steps: int) -> dict:
    """Median step times of `run` and of `unshortcut_run`, alternating step by step on the same
    iterations so both see the same load on a shared machine."""
    baseline = unshortcut_run(recipe, device)
    timed_step(baseline, first_iteration, device)  # warm-up
    walls: dict[str, list[float]] = {"baseline": [], "shortcuts": []}
    losses: dict[str, list[float]] = {"baseline": [], "shortcuts": []}
    for iteration in range(first_iteration + 1, first_iteration + 1 + steps):
        for name, which in (("baseline", baseline), ("shortcuts", run)):
            wall, _, stats = timed_step(which, iteration, device)
            walls[name].append(wall)
            losses[name].append(stats["loss"])
    medians = {name: statistics.median(values) for name, values in walls.items()}
    print(f"\nbaseline (batch norm unfolded, student recomputes stem + layer1), {steps} interleaved steps:")
    print(f"{'':<10} | {'median s/step':>13} | losses")
    for name in walls:
        print(f"{name:<10} | {medians[name]:>13.3f} | {', '.join(f'{x:.4f}' for x in losses[name])}")
    ratio = medians["baseline"] / medians["shortcuts"]
    print(f"speed-up from the shortcuts: {ratio:.3f}x")
    return {"baseline_step_seconds": walls["baseline"], "shortcut_step_seconds": walls["shortcuts"],
            "speedup": ratio}


def duration(seconds: float) -> str:
    days = seconds / 86_400
    return f"{days / 365.25:.1f} years" if days > 365 else f"{days:.1f} days"


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        started = time.perf_counter()
        recipe, embed_seconds = build_workspace(Path(tmp), args, device)
        setup_seconds = time.perf_counter() - started
        run = make_trainer(recipe, device, log=print)
        print(f"{args.model} (random weights) teacher + student, {args.batch_size} images/step at "
              f"{args.min_size}x{args.max_size} (source {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} JPEGs, bicubic up), "
              f"{args.regions} regions/image + 1 whole-image box, {args.concepts} concepts; device {device} "
              f"({device_name(device)}), {torch.get_num_threads()} threads, amp {args.amp}, channels_last "
              f"{args.channels_last}, {args.loader_workers} loader threads, torch {torch.__version__}; "
              f"workspace {setup_seconds:.0f} s "
              f"(concept embedding {embed_seconds:.0f} s)")
        iteration = 0
        for _ in range(args.warmup):
            wall, _, stats = timed_step(run, iteration, device)
            iteration += 1
            print(f"warm-up step: {wall:.2f} s, loss {stats['loss']:.3f}")
        walls, cpus = [], []
        for _ in range(args.steps):
            wall, cpu, stats = timed_step(run, iteration, device)
            iteration += 1
            walls.append(wall)
            cpus.append(cpu)
            print(f"step {iteration - args.warmup}: {wall:.2f} s wall, {cpu:.2f} s process CPU, "
                  f"{args.batch_size / wall:.2f} images/s, loss {stats['loss']:.3f}")
        median, cpu_median = statistics.median(walls), statistics.median(cpus)
        rate = args.batch_size / median
        figures = {
            "device": str(device), "device_name": device_name(device), "model": args.model,
            "batch_size": args.batch_size, "amp": args.amp, "channels_last": args.channels_last,
            "regions": args.regions, "concepts": args.concepts, "threads": torch.get_num_threads(),
            "steps": args.steps, "step_seconds": walls, "median_step_seconds": median,
            "median_cpu_seconds": cpu_median, "images_per_second": rate, "vs_paper": rate / PAPER_RATE,
            "paper_run_seconds": PAPER_IMAGES / rate,
        }
        if device.type == "cuda":
            figures["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        else:
            figures["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

        print(f"\n{'median s/step':>13} | {'best s/step':>11} | {'CPU s/step':>10} | {'images/s':>8} | "
              f"{'vs paper 3.5/GPU':>16} | {'vs target':>9}")
        print(f"{median:>13.3f} | {min(walls):>11.3f} | {cpu_median:>10.2f} | {rate:>8.3f} | "
              f"{rate / PAPER_RATE:>15.3f}x | {rate / (TARGET_RATIO * PAPER_RATE):>8.3f}x")
        print(f"the paper's {PAPER_IMAGES / 1e6:.1f} M images (600k x 96) at this rate: "
              f"{duration(PAPER_IMAGES / rate)} on one such device (paper: 6 days on 32 V100)")
        if device.type == "cpu":
            projected = args.batch_size * torch.get_num_threads() / cpu_median
            print(f"CPU time per step {cpu_median:.1f} s: on {torch.get_num_threads()} otherwise idle cores "
                  f"about {projected:.3f} images/s (projection, assumes full use of every thread)")
        if "peak_gpu_memory_gib" in figures:
            print(f"peak GPU memory {figures['peak_gpu_memory_gib']:.1f} GiB")

        if args.baseline:
            figures["baseline"] = compare_with_baseline(run, recipe, device, iteration, args.steps)
            iteration += args.steps + 1
        if args.profile:
            phases, step_seconds = profile_phases(run, range(iteration, iteration + args.profile_steps), device)
            iteration += args.profile_steps
            print_profile(phases, step_seconds, args.batch_size)
            figures["profile"] = {"step_seconds": step_seconds, "phases": phases}
        if args.flops:
            flops = count_flops(run, iteration, device)
            iteration += 1
            figures["step_flops"] = flops
            print(f"\nFLOPs of one step (convs + matmuls, forward + backward): {flops / 1e12:.2f} TFLOP, "
                  f"{flops / args.batch_size / 1e9:.0f} GFLOP/image; achieved at the median step: "
                  f"{flops / median / 1e12:.3f} TFLOP/s; {TARGET_RATIO}x the paper "
                  f"({TARGET_RATIO * PAPER_RATE:.0f} images/s) needs "
                  f"{flops / args.batch_size * TARGET_RATIO * PAPER_RATE / 1e12:.0f} TFLOP/s sustained")
        if args.op_table:
            print_op_table(run, iteration, device, args.op_table)
        if args.json is not None:
            args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
