"""Region-level language-image pretraining (RegionCLIP, Sec. 3): teacher, student, one step.

Per iteration, for this process's slice of the global batch:
1. propose regions (random boxes, or boxes from a file) and add one whole-image box per image;
2. the frozen teacher encodes the regions; its best concept per region is the pseudo label;
3. the student encodes the same regions and the whole images in one pass;
4. losses: region-concept contrastive (kept regions), concept distillation (all regions),
   image-text contrastive (whole-image embedding vs one random caption, gathered over ranks).

Every loss is scaled so that, after DDP averages gradients over processes, the update equals the
single-process update on the global batch (see `_global_mean`).
"""

from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torchvision.ops.misc import FrozenBatchNorm2d

from regionclip_cli.modeling.batchnorm_folding import fold_batchnorm
from regionclip_cli.data.captions import (CaptionedImage, global_batch_indices, rank_slice,
                                         read_captioned_images, sample_generator)
from regionclip_cli.modeling.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.data.images import ResizeConfig, load_image, pad_batch, resize_for_model, to_model_tensor
from regionclip_cli.modeling.losses import concept_distillation, image_text_contrastive, region_concept_contrastive
from regionclip_cli.modeling.clip import LoadedClip, load_clip
from regionclip_cli.data.proposals import BoxFile, RandomBoxConfig, random_boxes, sanitize_boxes
from regionclip_cli.data.pseudolabel_shards import PrecomputedLabels, load_precomputed
from regionclip_cli.stages.pseudolabel.labeler import PseudoLabels, LabelRuleConfig, assign_pseudo_labels
from regionclip_cli.stages.pretrain.recipe import PretrainRecipe
from regionclip_cli.engine.recipe import to_plain
from regionclip_cli.modeling.region_encoder import RegionEncoder
from regionclip_cli.modeling.text import check_matches, load_text_embeddings
from regionclip_cli.engine.training import (DistributedContext, build_optimizer, load_state, lr_at,
                                     save_state)

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "attnpool")


def freeze_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d with the same statistics (the paper's frozen BN)."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen.to(child.weight.device))
        else:
            freeze_batchnorm(child)
    return module


def freeze_stages(visual: torch.nn.Module, freeze_at: int) -> None:
    """Freeze the stem (freeze_at >= 1) and the first `freeze_at - 1` residual stages."""
    stem = [visual.conv1, visual.bn1, visual.conv2, visual.bn2, visual.conv3, visual.bn3]
    stages = [stem, [visual.layer1], [visual.layer2], [visual.layer3], [visual.layer4], [visual.attnpool]]
    for modules in stages[:freeze_at]:
        for module in modules:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
    # The attention pool's key bias shifts all of a query's logits equally, so the softmax ignores
    # it and autograd never gives it a gradient; DDP would wait for one forever.
    visual.attnpool.k_proj.bias.requires_grad_(False)


def clip_state_template(teacher: LoadedClip) -> dict[str, torch.Tensor]:
    """What a whole-CLIP checkpoint takes from the teacher: its text side, and the image tower's
    `num_batches_tracked` counters that FrozenBatchNorm2d does not keep (so exports load strictly).

    Taken before the teacher's batch norm is folded, which renames its image tower's keys.
    """
    return {k: v.detach().cpu().clone() for k, v in teacher.model.state_dict().items()
            if not k.startswith("visual.") or k.endswith("num_batches_tracked")}


def student_state_as_clip(template: dict[str, torch.Tensor], student_visual: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A whole-CLIP state dict: the teacher's text side (`clip_state_template`) with the student's image tower."""
    state = dict(template)
    for key, value in student_visual.state_dict().items():
        state[f"visual.{key}"] = value.detach().cpu().clone()
    return state


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W] padded, normalised
    regions: list[torch.Tensor]  # per image [R, 4] in input pixels
    whole: list[torch.Tensor]  # per image [1, 4] whole-image box, input pixels
    captions: list[str]
    labels: PseudoLabels | None = None  # read from a `pseudolabel` folder, else computed on the fly


class BatchBuilder:
    """Builds this process's part of the global batch at an iteration, deterministically."""

    def __init__(self, recipe: PretrainRecipe, items: list[CaptionedImage], mean, std,
                 ctx: DistributedContext, precomputed: PrecomputedLabels | None = None):
        self.recipe = recipe
        self.items = items
        self.mean, self.std = mean, std
        self.positions = rank_slice(recipe.train.batch_size, ctx.rank, ctx.world_size)
        self.resize = ResizeConfig(recipe.train.min_size, recipe.train.max_size, interpolation="bicubic")
        proposals = recipe.proposals
        self.box_file = BoxFile(proposals.file) if proposals.source == "file" else None
        self.precomputed = precomputed
        self.random_spec = RandomBoxConfig(count=proposals.regions_per_image, grid=proposals.grid,
                                           min_size=proposals.min_size, seed=recipe.train.seed)
        self.problems: list[str] = []
        workers = recipe.train.loader_workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="regionclip-data") if workers > 0 else None

    def _regions(self, item: CaptionedImage, width: int, height: int, key: str,
                 generator: torch.Generator) -> torch.Tensor:
        if self.box_file is None:
            return random_boxes(width, height, self.random_spec, key=key)
        boxes, problems = sanitize_boxes(self.box_file.entry_for(item.path).boxes, width, height,
                                         str(item.path))
        self.problems.extend(problems)
        count = self.recipe.proposals.regions_per_image
        if len(boxes) > count:
            boxes = boxes[torch.randperm(len(boxes), generator=generator)[:count]]
        return boxes

    def _sample(self, iteration: int, position: int, index: int):
        train = self.recipe.train
        item = self.items[index]
        generator = sample_generator(train.seed, iteration, position)
        original = load_image(item.path)
        width, height = original.size
        labels = None
        if self.precomputed is not None:
            boxes, labels = self._precomputed(item, generator)
        else:
            boxes = self._regions(item, width, height, f"{iteration}:{position}", generator)
        if train.hflip and bool(torch.rand((), generator=generator) < 0.5):
            original = original.transpose(0)  # PIL FLIP_LEFT_RIGHT
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        resized, scale = resize_for_model(original, self.resize)
        caption = item.captions[int(torch.randint(len(item.captions), (), generator=generator))]
        whole = torch.tensor([[0.0, 0.0, resized.width, resized.height]])
        return to_model_tensor(resized, self.mean, self.std), boxes * scale, whole, caption, labels

    def build(self, iteration: int) -> Batch:
        """Decode, augment and propose for this process's images (in `loader_workers` threads)."""
        train = self.recipe.train
        indices = global_batch_indices(len(self.items), train.batch_size, iteration, train.seed)
        jobs = [(iteration, position, indices[position]) for position in self.positions]
        if self._pool is None:
            samples = [self._sample(*job) for job in jobs]
        else:
            samples = list(self._pool.map(lambda job: self._sample(*job), jobs))
        tensors, regions, whole, captions, labels = (list(column) for column in zip(*samples))
        labels = [x for x in labels if x is not None]
        joined = None
        if labels:
            joined = PseudoLabels(*(torch.cat([getattr(x, f) for x in labels])
                                    for f in ("labels", "scores", "keep")))
        return Batch(pad_batch(tensors), regions, whole, captions, joined)

    def _precomputed(self, item: CaptionedImage, generator: torch.Generator) -> tuple[torch.Tensor, PseudoLabels]:
        record = self.precomputed.for_image(item.path)
        rows = record["regions"]
        count = self.recipe.proposals.regions_per_image
        if len(rows) > count:
            rows = [rows[i] for i in torch.randperm(len(rows), generator=generator)[:count].tolist()]
        boxes = torch.tensor([r["box"] for r in rows], dtype=torch.float32).reshape(-1, 4)
        labels = PseudoLabels(torch.tensor([r["concept_index"] for r in rows], dtype=torch.long),
                              torch.tensor([r["score"] for r in rows], dtype=torch.float32),
                              torch.tensor([bool(r["keep"]) for r in rows], dtype=torch.bool))
        return boxes, labels


class RegionCLIPPretraining:
    """Teacher, student, concept pool and optimiser of one pretraining run."""

    def __init__(self, recipe: PretrainRecipe, ctx: DistributedContext, log: Callable[[str], None]):
        self.recipe = recipe
        self.ctx = ctx
        device = ctx.device
        self.teacher = load_clip(recipe.teacher.model, pretrained=recipe.teacher.pretrained,
                                 weights=recipe.teacher.weights, device=device)
        for parameter in self.teacher.model.parameters():
            parameter.requires_grad_(False)
        pool = load_text_embeddings(recipe.concepts)
        check_matches(pool, self.teacher, origin=f"concepts {recipe.concepts}")
        self.concept_names = pool.names
        self.concepts = F.normalize(pool.embeddings.float(), dim=-1).to(device)
        self.clip_template = clip_state_template(self.teacher)

        visual = copy.deepcopy(self.teacher.model.visual).requires_grad_(True)
        if recipe.student.weights is not None:
            self._load_student(visual, recipe.student.weights)
        freeze_batchnorm(visual)
        freeze_stages(visual, recipe.student.freeze_at)
        self.student_visual = visual.to(device).train()
        # A student made from the teacher with its stem and layer1 frozen computes exactly the
        # teacher's layer1 features, so it takes them from the teacher's pass instead.
        self.shares_layer1 = recipe.student.weights is None and recipe.student.freeze_at >= 2
        fold_batchnorm(self.teacher.model.visual.eval())
        self.teacher_encoder = RegionEncoder(self.teacher.model.visual).eval()
        if recipe.train.channels_last:
            self.student_visual.to(memory_format=torch.channels_last)
            self.teacher.model.visual.to(memory_format=torch.channels_last)
        self.student = RegionEncoder(self.student_visual)
        self.trainable = [p for p in self.student.parameters() if p.requires_grad]
        if ctx.enabled:
            self.student = torch.nn.parallel.DistributedDataParallel(
                self.student, device_ids=[device.index] if device.type == "cuda" else None)
        opt = recipe.optimizer
        self.optimizer = build_optimizer(self.trainable, opt.name, opt.lr, opt.momentum, opt.weight_decay)
        self.autocast_dtype = self._autocast_dtype()
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype == torch.float16)
        self.pseudo_spec = LabelRuleConfig(recipe.pseudo_labels.threshold, recipe.losses.temperature)
        data = read_captioned_images(recipe.data.images, recipe.data.captions)
        if data.images_without_captions or data.captions_without_images:
            log(f"data: {len(data.items)} captioned images; {data.images_without_captions} images "
                f"without captions and {data.captions_without_images} caption rows without images skipped")
        self.data = data
        precomputed = None
        if recipe.pseudo_labels.precomputed is not None:
            precomputed = load_precomputed(recipe.pseudo_labels.precomputed, self.concept_names)
        self.batches = BatchBuilder(recipe, data.items, self.teacher.mean, self.teacher.std, ctx, precomputed)
        self.start_iteration = 0

    def _load_student(self, visual: torch.nn.Module, path: Path) -> None:
        checkpoint = load_checkpoint(path)
        prefix = "visual." if any(k.startswith("visual.") for k in checkpoint.state_dict) else ""
        state = {k[len(prefix):]: v for k, v in checkpoint.state_dict.items() if k.startswith(prefix)}
        missing, unexpected = visual.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise RegionclipError(f"student.weights {path}: does not fit the teacher's image tower "
                                  f"(e.g. {(missing or unexpected)[0]})")

    def _autocast_dtype(self) -> torch.dtype | None:
        amp = self.recipe.train.amp
        if amp == "off" or (amp == "auto" and self.ctx.device.type != "cuda"):
            return None
        return torch.float16 if amp == "fp16" else torch.bfloat16

    def _autocast(self):
        return torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def _global_mean(self, local_mean: torch.Tensor, local_count: torch.Tensor | int) -> torch.Tensor:
        """Rescale a per-process mean so DDP's gradient average yields the global-batch mean."""
        if not self.ctx.enabled:
            return local_mean
        count = torch.as_tensor(local_count, dtype=torch.float32, device=local_mean.device)
        total = self.ctx.all_sum(count)
        return local_mean * torch.where(total > 0, count * self.ctx.world_size / total.clamp(min=1), 0.0)

    def _gather_labels(self, labels: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pseudo labels of the whole global batch (rank order) and which are kept: the
        contrastive candidates."""
        if not self.ctx.enabled:
            return labels, keep
        # Every rank pads to the same bound known on the host (its images x regions per image),
        # so no rank has to wait on the device to learn the others' region counts.
        bound = len(self.batches.positions) * self.recipe.proposals.regions_per_image
        padded = torch.full((bound,), -1, dtype=labels.dtype, device=labels.device)
        padded[: labels.numel()] = torch.where(keep, labels, -1)
        gathered = [torch.empty_like(padded) for _ in range(self.ctx.world_size)]
        torch.distributed.all_gather(gathered, padded)
        everything = torch.cat(gathered)
        return everything.clamp(min=0), everything >= 0

    @torch.no_grad()
    def _caption_embeddings(self, captions: list[str]) -> torch.Tensor:
        tokens = self.teacher.tokenizer(captions).to(self.ctx.device)
        return F.normalize(self.teacher.model.encode_text(tokens).float(), dim=-1)

    def step(self, iteration: int, batch: Batch | None = None) -> dict[str, float]:
        """One optimisation step; returns this step's global loss terms and pseudo-label stats.

        `batch` is `self.batches.build(iteration)`, built ahead by the caller to overlap data
        loading with compute; built here when not given.
        """
        recipe, device = self.recipe, self.ctx.device
        batch = batch if batch is not None else self.batches.build(iteration)
        images = batch.images.to(device)
        if recipe.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        regions = [b.to(device) for b in batch.regions]
        counts = [len(b) for b in regions]
        with torch.no_grad(), self._autocast():
            layer1 = self.teacher_encoder.layer1(images)
            teacher_features = self.teacher_encoder.trunk(images, layer1)
            teacher_regions = F.normalize(self.teacher_encoder.pool(teacher_features, regions).float(), dim=-1)
        labels = batch.labels
        if labels is None:
            labels = assign_pseudo_labels(teacher_regions, self.concepts, self.pseudo_spec, any_kept=self.ctx.all_any)
        labels = PseudoLabels(labels.labels.to(device), labels.scores.to(device), labels.keep.to(device))
        with self._autocast():
            joint = [torch.cat([r, w.to(device)]) for r, w in zip(regions, batch.whole)]
            embeddings = F.normalize(
                self.student(images, joint, layer1_features=layer1 if self.shares_layer1 else None).float(), dim=-1)
        per_image = embeddings.split([c + 1 for c in counts])
        student_regions = torch.cat([e[:-1] for e in per_image])
        student_whole = torch.stack([e[-1] for e in per_image])

        weights, tau = recipe.losses, recipe.losses.temperature
        terms: dict[str, torch.Tensor] = {}
        kept = labels.keep.sum()
        if weights.region_concept > 0:
            candidates, candidate_keep = self._gather_labels(labels.labels, labels.keep)
            local = region_concept_contrastive(student_regions, self.concepts, labels.labels, tau,
                                               candidates, labels.keep, candidate_keep)
            terms["region_concept"] = self._global_mean(local, kept)
        if weights.distillation > 0:
            local = concept_distillation(student_regions, teacher_regions, self.concepts, tau)
            terms["distillation"] = self._global_mean(local, len(student_regions))
        if weights.image_text > 0:
            text = self._caption_embeddings(batch.captions)
            local = image_text_contrastive(student_whole, text, tau)
            terms["image_text"] = self._global_mean(local, len(student_whole))
        total = sum(getattr(weights, name) * value for name, value in terms.items())

        lr = self._set_lr(iteration)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if recipe.optimizer.clip_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, recipe.optimizer.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()

        # Read back once, at the end: every earlier .item() would drain the GPU's queue mid-step.
        world = self.ctx.world_size
        readings = [*(value.detach().float() for value in terms.values()), kept.float(),
                    labels.scores.sum().float(), torch.tensor(float(len(student_regions)), device=device)]
        if grad_norm is not None:
            readings.append(grad_norm.float() / world)  # equal on every rank: the sum is the norm
        summed = self.ctx.all_sum(torch.stack(readings)).tolist()
        stats = {name: summed[i] / world for i, name in enumerate(terms)}
        kept_sum, score_sum, regions_sum = summed[len(terms): len(terms) + 3]
        stats["loss"] = sum(getattr(weights, name) * stats[name] for name in terms)
        stats["lr"] = lr
        stats["kept_regions"] = kept_sum / max(regions_sum, 1)
        stats["top1_prob"] = score_sum / max(regions_sum, 1)
        if grad_norm is not None:
            stats["grad_norm"] = summed[-1]
        return stats

    def _set_lr(self, iteration: int) -> float:
        opt = self.recipe.optimizer
        lr = lr_at(iteration, opt.lr, opt.warmup_iterations, opt.warmup_factor, opt.steps, opt.gamma)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    # --- checkpoints -------------------------------------------------------------------------

    def metadata(self) -> dict:
        return {"model": self.teacher.name, "recipe": to_plain(self.recipe),
                "teacher_identity": self.teacher.identity, "concepts": self.concept_names}

    def save(self, path: Path, finished_iterations: int) -> None:
        save_state(path, model_state=self.student_visual.state_dict(), optimizer=self.optimizer,
                   iteration=finished_iterations, metadata=self.metadata())

    def resume(self, path: Path) -> None:
        payload = load_state(path)
        saved = payload["metadata"].get("recipe", {})
        current = to_plain(self.recipe)
        differing = [k for k in current if k != "train" and saved.get(k) != current[k]]
        differing += [f"train.{k}" for k in current["train"]
                      if k != "iterations" and saved.get("train", {}).get(k) != current["train"][k]]
        if differing:
            raise RegionclipError(f"--resume {path}: the recipe differs from the checkpoint's in "
                                  f"{', '.join(differing)}; exact resume needs the same recipe")
        self.student_visual.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.start_iteration = int(payload["iteration"])

    def export_student(self, path: Path, finished_iterations: int) -> None:
        """The pretrained student as a whole CLIP checkpoint: `zeroshot --weights` loads it."""
        metadata = {**self.metadata(), "iterations": finished_iterations,
                    "input_min_size": self.teacher.input_min_size or self.recipe.train.min_size,
                    "input_max_size": self.teacher.input_max_size or self.recipe.train.max_size,
                    "trained_by": "regionclip pretrain"}
        metadata.pop("concepts")
        save_checkpoint(path, Checkpoint(kind="clip", model=self.teacher.name,
                                         state_dict=student_state_as_clip(self.clip_template, self.student_visual),
                                         metadata=metadata))


@dataclass
class PretrainOutcome:
    finished_iterations: int
    stopped_by: int | None  # the signal that stopped the run early, if any
    student: Path | None  # the exported student checkpoint (None when stopped early)
    checkpoint: Path
    last_stats: dict[str, float]
    seconds: float
    images: int


def run_pretraining(recipe: PretrainRecipe, *, resume: Path | None, progress: bool,
                    log: Callable[[str], None]) -> PretrainOutcome:
    """Train for `recipe.train.iterations` (from a checkpoint if `resume`), saving as it goes."""
    from regionclip_cli.core.atomic import write_json
    from regionclip_cli.core.devices import resolve_device
    from regionclip_cli.core.progress import progress_bar
    from regionclip_cli.engine.training import MetricsLog, StopRequest, init_distributed

    ctx = init_distributed(resolve_device(recipe.device))
    try:
        run = RegionCLIPPretraining(recipe, ctx, log)
        out = recipe.output
        checkpoint = out / "checkpoints" / "last.pt"
        if resume is not None:
            run.resume(resume)
        train = recipe.train
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "recipe.json", to_plain(recipe), indent=2)
        metrics = MetricsLog(out / "metrics.jsonl", resume_from=run.start_iteration if resume else None) \
            if ctx.is_main else None
        iteration, stats, started = run.start_iteration, {}, time.perf_counter()
        stopped_by = None
        prefetch = ThreadPoolExecutor(1, thread_name_prefix="regionclip-prefetch")
        with StopRequest() as stop, progress_bar(disable=not (progress and ctx.is_main)) as bar, prefetch:
            task = bar.add_task("pretrain", total=train.iterations, completed=iteration, unit="it", status="")
            upcoming = prefetch.submit(run.batches.build, iteration) if iteration < train.iterations else None
            while iteration < train.iterations:
                batch = upcoming.result()
                if iteration + 1 < train.iterations:
                    upcoming = prefetch.submit(run.batches.build, iteration + 1)
                stats = run.step(iteration, batch)
                iteration += 1
                rate = (iteration - run.start_iteration) * train.batch_size / (time.perf_counter() - started)
                stats["images_per_second"] = rate
                bar.update(task, advance=1, status=" ".join(
                    f"{k}={stats[k]:.3f}" for k in ("loss", "region_concept", "distillation", "image_text")
                    if k in stats) + f" {rate:.1f} img/s")
                if metrics is not None and (iteration % train.log_every == 0 or iteration == train.iterations):
                    metrics.write({"iteration": iteration, **stats})
                if ctx.any(stop.requested):
                    stopped_by = stop.signal or -1
                    break
                if iteration % train.checkpoint_every == 0 and ctx.is_main:
                    run.save(checkpoint, iteration)
        for problem in run.batches.problems:
            log(problem)
        student = None
        if ctx.is_main:
            run.save(checkpoint, iteration)
            if stopped_by is None:
                student = out / "student.pt"
                run.export_student(student, iteration)
        ctx.barrier()
        seconds = time.perf_counter() - started
        return PretrainOutcome(iteration, stopped_by, student, checkpoint, stats, seconds,
                               (iteration - run.start_iteration) * train.batch_size)
    finally:
        ctx.close()
