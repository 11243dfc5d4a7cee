"""Detector finetuning throughput: images/s of the real engine step (`Trainer.step` of a `FinetuneTask`).

The paper's COCO finetuning setting (the built-in recipe `finetune-coco-rn50`, its detector and
optimiser sections unchanged): RN50 box head with stem + layer1 frozen, 1,000 RPN proposals per
image, 512 sampled regions per image, focal-scaled cross-entropy against the 48 base classes'
text embeddings; here short side 800, long side <= 1333, batch 2 (one GPU's share of the
original's batch 16 on 8 GPUs). No pretrained weights exist offline, so a throw-away workspace in
a temp dir holds a random-init RN50 saved as the box head's `weights` file, a random RPN on that
trunk, smooth random 1000x600 JPEGs that the task's data path bilinear-upscales to 1333x800, and
a COCO-format annotation file (6 base-class boxes per image, the `coco-ovd` vocabulary). The class
names are embedded with one template ("single"): only their number reaches the step. A random RPN
keeps few boxes after NMS 0.7, so the recipe's `detector.rpn_nms_threshold` is set to 1.0 (no
NMS) and the step always sees 1,000 proposals, as `bench_detector.py` does.

The step is the engine's, unchanged: `task.batch(iteration)` (decode, flip, resize; built ahead
in a background thread by `fit`, so timed apart and not counted in the step), then
`Trainer.step` (the task's forward and losses, backward, SGD). Phases of every timed step are
cut by wrapping the functions the step calls (patched in this process only) and, for backward,
by an identity autograd node on the trunk's output that records when the gradient reaches it:
RPN (frozen, no gradients), pad + normalise, box-head trunk (stem -> layer3), RoIAlign + layer4
+ attention pool, region sampling, predictor, losses; backward of losses + predictor + pool +
layer4 + RoIAlign, backward of the trunk (layer3, layer2), SGD step. The device is synchronised
at every boundary (a dozen times a step; `--no-phases` times the step without).

Baseline, measured in the same process on the same batches, interleaved step by step: the task's
forward alone (`task.step` under `torch.no_grad()`: proposals, sampling, every region through
layer4, the losses; no autograd graph, no backward, no optimiser). The ratio step / forward is
what training costs over computing the same losses, i.e. what backward and the optimiser add;
no choice of frozen layers can take a step below that forward.

    python benchmarks/bench_finetune.py --threads 1 --warmup 0 --steps 1          # CPU (minutes per step)
    python benchmarks/bench_finetune.py --device cuda --amp bf16 --warmup 2 --steps 10
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator
from unittest import mock

import torch

from regionclip_cli.data.vocab import load_vocabulary
from regionclip_cli.engine.distributed import DistributedContext
from regionclip_cli.engine.loop import Trainer
from regionclip_cli.engine.recipe import find_recipe, load_recipe
from regionclip_cli.engine.task import Runtime, autocast_dtype_for
from regionclip_cli.modeling.checkpoints import save_checkpoint
from regionclip_cli.modeling.clip import load_clip
from regionclip_cli.modeling.detector import model as detector_module
from regionclip_cli.modeling.rpn import RPNConfig, build_proposal_network, rpn_checkpoint
from regionclip_cli.stages.finetune.data import DatasetConfig
from regionclip_cli.stages.finetune.recipe import BoxHeadConfig, FinetuneConfig
from regionclip_cli.stages.finetune.runner import read_training_data
from regionclip_cli.stages.finetune.task import FinetuneTask

from bench_pretrain import SOURCE_SIZE, PhaseClock, duration, write_image  # benchmarks/ (scripts run from there)
from machine import add_training_step_options, device_name, synchronize  # benchmarks/machine.py

PAPER_RECIPE = "finetune-coco-rn50"
PAPER_IMAGES = 90_000 * 16  # the original's COCO schedule: 90k iterations of batch 16 (8 GPUs x 2)
BOXES_PER_IMAGE = 6


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_step_options(parser)
    parser.add_argument("--min-size", type=int, default=800, help="short side of every training image")
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--proposals", type=int, default=1000, help="RPN proposals per image")
    parser.add_argument("--regions", type=int, default=512, help="sampled regions per image")
    parser.add_argument("--freeze-at", type=int, default=2, help="box_head.freeze_at (2: stem + layer1, the paper)")
    parser.add_argument("--images", type=int, default=8, help="distinct JPEGs in the workspace (cycled)")
    parser.add_argument("--no-phases", action="store_true", help="time the step without the phase instrumentation")
    parser.add_argument("--no-baseline", action="store_true", help="skip the forward-only baseline")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads [default: torch's]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return parser.parse_args()


# --- workspace ---------------------------------------------------------------------------------

def write_annotations(path: Path, images: Path, count: int, rng: random.Random) -> None:
    """A COCO-format file over the workspace's JPEGs: base-class boxes, the coco-ovd categories."""
    vocabulary = load_vocabulary("coco-ovd")
    base = list(vocabulary.splits["base"])
    width, height = SOURCE_SIZE
    rows, annotations = [], []
    for index in range(count):
        name = f"image_{index:03d}.jpg"
        write_image(images / name, rng)
        rows.append({"id": index + 1, "file_name": name, "width": width, "height": height})
        for _ in range(BOXES_PER_IMAGE):
            w, h = rng.uniform(40, width / 2), rng.uniform(40, height / 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": rng.choice(base),
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": cid, "name": name} for cid, name in zip(vocabulary.category_ids, vocabulary.names)]
    path.write_text(json.dumps({"images": rows, "annotations": annotations, "categories": categories}))


def build_workspace(root: Path, args: argparse.Namespace, device: torch.device) -> FinetuneConfig:
    """Box-head weights, an RPN, images and annotations; the paper's recipe pointed at them."""
    torch.manual_seed(args.seed)
    clip = load_clip(args.model, random_init=True)
    weights = root / "box_head.pt"
    torch.save(clip.model.state_dict(), weights)
    rpn = build_proposal_network(RPNConfig(), clip_visual=clip.model.visual, mean=clip.mean, std=clip.std)
    save_checkpoint(root / "rpn.pt", rpn_checkpoint(rpn, args.model, {}))
    del clip, rpn
    images = root / "images"
    images.mkdir()
    write_annotations(root / "annotations.json", images, args.images, random.Random(args.seed))

    path, origin = find_recipe(PAPER_RECIPE)
    paper = load_recipe(FinetuneConfig, path, origin_name=origin)
    data = dataclasses.replace(paper.data, train=DatasetConfig(root / "annotations.json", images), test=None,
                               min_sizes=[args.min_size], max_size=args.max_size, loader_workers=0)
    detector = dataclasses.replace(paper.detector, proposals=args.proposals, regions_per_image=args.regions,
                                   rpn_nms_threshold=1.0)
    train = dataclasses.replace(paper.train, iterations=args.warmup + 2 * args.steps + 2,
                                batch_size=args.batch_size, amp=args.amp, seed=args.seed)
    return dataclasses.replace(
        paper, data=data, rpn=root / "rpn.pt", detector=detector, train=train, templates="single",
        box_head=BoxHeadConfig(model=args.model, weights=weights, freeze_at=args.freeze_at),
        output=root / "run", device=str(device))


def make_trainer(recipe: FinetuneConfig, device: torch.device) -> Trainer:
    """The engine around a finetuning task, in this process."""
    runtime = Runtime(DistributedContext(0, 1, device), autocast_dtype_for(recipe.train.amp, device))
    task = FinetuneTask(recipe, runtime, read_training_data(recipe.data).training, log=lambda message: None)
    return Trainer(task, runtime, train=recipe.train, optimizer=recipe.optimizer)


# --- timing ------------------------------------------------------------------------------------

PHASES = {  # phase: its table row, in the step's order
    "rpn": "RPN fwd (own frozen trunk + head, top-k)",
    "pad": "pad + normalise",
    "trunk": "box-head trunk fwd (stem -> layer3)",
    "pool": "RoIAlign + layer4 + attention pool fwd",
    "sample": "region sampling (match, draw)",
    "predictor": "predictor (cosine, box deltas)",
    "loss": "losses (focal CE, L1)",
    "forward other": "forward: autocast, global mean, glue",
    "bwd: head": "bwd: losses, predictor, pool, layer4, RoIAlign",
    "bwd: trunk": "bwd: box-head trunk (layer3, layer2)",
    "optimizer": "SGD step",
}


@contextlib.contextmanager
def instrumented(run: Trainer, clock: PhaseClock) -> Iterator[None]:
    """Patch the functions the step calls (this process only) so that each reports its phase."""
    task = run.task
    detector, encoder = task.detector, task.detector.encoder
    trunk = encoder.trunk

    def marked_trunk(*args, **kwargs):
        return clock.backward_mark(trunk(*args, **kwargs), "bwd: trunk")

    sample = detector_module.sample_regions

    def counted_sample(proposals, *args, **kwargs):
        out = sample(proposals, *args, **kwargs)
        clock.counts.append((len(proposals), len(out[0])))  # (proposals, sampled regions) per image
        return out

    zero_grad, unscale = run.optimizer.zero_grad, run.scaler.unscale_

    def optimizer_zero_grad(*args, **kwargs):
        zero_grad(*args, **kwargs)
        clock.mark("bwd: head")  # backward starts right after zero_grad

    def scaler_unscale(*args, **kwargs):
        clock.end_backward()
        return unscale(*args, **kwargs)

    patches = [
        mock.patch.object(task, "step", clock.wrap(task.step, "forward other")),
        mock.patch.object(detector, "propose", clock.wrap(detector.propose, "rpn")),
        mock.patch.object(detector_module, "normalise_and_pad", clock.wrap(detector_module.normalise_and_pad, "pad")),
        mock.patch.object(encoder, "trunk", clock.wrap(marked_trunk, "trunk")),
        mock.patch.object(encoder, "pool", clock.wrap(encoder.pool, "pool")),
        mock.patch.object(detector_module, "sample_regions", clock.wrap(counted_sample, "sample")),
        mock.patch.object(detector.predictor, "forward", clock.wrap(detector.predictor.forward, "predictor")),
        mock.patch.object(detector_module, "classification_loss",
                          clock.wrap(detector_module.classification_loss, "loss")),
        mock.patch.object(detector_module, "box_regression_loss",
                          clock.wrap(detector_module.box_regression_loss, "loss")),
        mock.patch.object(run.optimizer, "zero_grad", optimizer_zero_grad),
        mock.patch.object(run.scaler, "unscale_", scaler_unscale),
        mock.patch.object(run.optimizer, "step", clock.wrap(run.optimizer.step, "optimizer")),
    ]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


def timed(fn, device: torch.device) -> tuple[float, float, object]:
    """(wall, process CPU) seconds of `fn()` and its result, the device synchronised around it."""
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu, out


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        started = time.perf_counter()
        recipe = build_workspace(Path(tmp), args, device)
        run = make_trainer(recipe, device)
        setup_seconds = time.perf_counter() - started
        task = run.task
        trainable = sum(p.numel() for p in task.parameters())
        print(f"{args.model} (random weights) box head, freeze_at {args.freeze_at} "
              f"({trainable / 1e6:.1f} M trainable), {args.batch_size} images/step at {args.min_size}x{args.max_size} "
              f"(source {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} JPEGs, bilinear up), {args.proposals} proposals and "
              f"{args.regions} sampled regions/image, {len(task.vocabulary.names)} training classes; device {device} "
              f"({device_name(device)}), {torch.get_num_threads()} threads, amp {args.amp}, torch {torch.__version__}; "
              f"workspace + task {setup_seconds:.0f} s")

        iteration = 0
        for _ in range(args.warmup):
            wall, _, stats = timed(lambda: run.step(iteration), device)
            iteration += 1
            print(f"warm-up step: {wall:.2f} s, loss {stats['loss']:.3f}")

        walls, cpus, data, forwards = [], [], [], []
        phases: dict[str, list[float]] = defaultdict(list)
        for step in range(1, args.steps + 1):
            data_wall, _, batch = timed(lambda: task.batch(iteration), device)
            data.append(data_wall)
            clock = PhaseClock(device)
            clock.counts = []
            with instrumented(run, clock) if not args.no_phases else contextlib.nullcontext():
                wall, cpu, stats = timed(lambda: run.step(iteration, batch), device)
            iteration += 1
            walls.append(wall)
            cpus.append(cpu)
            for name in PHASES:
                phases[name].append(clock.totals.get(name, 0.0))
            phases["other"].append(wall - sum(clock.totals.get(name, 0.0) for name in PHASES))
            line = (f"step {step}: {wall:.2f} s wall, {cpu:.2f} s process CPU, {args.batch_size / wall:.3f} images/s, "
                    f"loss {stats['loss']:.3f} (cls {stats['loss_cls']:.3f}, box {stats['loss_box_reg']:.3f})")
            if clock.counts:
                line += (f", proposals/image {sorted({c[0] for c in clock.counts})}, "
                         f"regions/image {sorted({c[1] for c in clock.counts})}")
            if not args.no_baseline:
                with torch.no_grad():
                    forward, _, _ = timed(lambda: task.step(batch), device)
                forwards.append(forward)
                line += f"; forward only {forward:.2f} s"
            print(line, flush=True)

        median, cpu_median = statistics.median(walls), statistics.median(cpus)
        rate = args.batch_size / median
        figures = {
            "device": str(device), "device_name": device_name(device), "model": args.model,
            "batch_size": args.batch_size, "amp": args.amp, "min_size": args.min_size, "max_size": args.max_size,
            "proposals": args.proposals, "regions": args.regions, "freeze_at": args.freeze_at,
            "threads": torch.get_num_threads(), "steps": args.steps, "step_seconds": walls,
            "median_step_seconds": median, "median_cpu_seconds": cpu_median, "images_per_second": rate,
            "data_seconds": data,
        }
        if device.type == "cuda":
            figures["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        else:
            figures["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

        print(f"\n{'median s/step':>13} | {'best s/step':>11} | {'CPU s/step':>10} | {'images/s':>8} | {'ms/image':>8}")
        print(f"{median:>13.3f} | {min(walls):>11.3f} | {cpu_median:>10.2f} | {rate:>8.3f} | "
              f"{1000 * median / args.batch_size:>8.0f}")
        print(f"data for one step (decode, flip, resize {args.batch_size} images; prefetched by fit, not in the "
              f"step): {statistics.median(data):.3f} s")
        print(f"the paper's {PAPER_IMAGES / 1e6:.2f} M images (90k iterations x 16) at this rate: "
              f"{duration(PAPER_IMAGES / rate)} on one such device")
        if "peak_gpu_memory_gib" in figures:
            print(f"peak GPU memory {figures['peak_gpu_memory_gib']:.1f} GiB")
        else:
            print(f"peak RSS {figures['peak_rss_gib']:.1f} GiB")

        if not args.no_phases:
            rows = {name: statistics.median(values) for name, values in phases.items()}
            figures["phases"] = rows
            print(f"\nwhere the step goes (median of {args.steps}; device synchronised at every boundary):")
            header = f"{'phase':<48} | {'s/step':>8} | {'ms/image':>8} | {'share':>6}"
            print(header)
            print("-" * len(header))
            for name, value in rows.items():
                label = PHASES.get(name, "other (zero_grad, lr, read-back)")
                print(f"{label:<48} | {value:>8.3f} | {1000 * value / args.batch_size:>8.1f} | "
                      f"{value / median:>6.1%}")
        if forwards:
            forward = statistics.median(forwards)
            figures["forward_only_seconds"] = forwards
            figures["step_over_forward"] = median / forward
            print(f"\nbaseline, the same step's forward alone (no_grad, same batches, interleaved): "
                  f"{forward:.3f} s -> {args.batch_size / forward:.3f} images/s")
            print(f"training step / forward only: {median / forward:.2f}x (backward + optimiser add "
                  f"{(median - forward) / median:.0%} of the step)")
        if args.json is not None:
            args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
