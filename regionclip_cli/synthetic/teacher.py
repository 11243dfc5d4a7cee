"""The world's CLIP teacher: a tiny open_clip model trained on world image–caption pairs.

RegionCLIP needs a CLIP that understands whole images; no pretrained weights can be downloaded
here, so we train one. Every signal comes from captions (no boxes, no object lists), training
images come from world seeds the evaluation never uses, and the last phase is CLIP's objective.
Three phases, because plain contrastive training from scratch stayed at chance (5 %) on a CPU
budget, measured at 500 to 3,000 steps with several recipes:

1. *Tagging warm-up* (`tagging_steps`). Single-shape images (as web photos are mostly of one
   prominent thing) and a linear head on the image embedding, trained with cross-entropy on the
   shape the captions name: the image tower learns shapes without waiting for a text tower that
   does not yet know any word.
2. *Locked-image text training* (`locked_steps`), as in LiT (Zhai et al., 2022): the image tower
   is frozen and the text tower learns to meet it, on world scenes of one or two shapes with
   their full captions. Contrastive training from a random text tower would otherwise unlearn the
   image tower's shapes before the words mean anything.
3. *CLIP* (`clip_steps`): everything trains together with the symmetric image–caption InfoNCE, at
   a lower learning rate.

Phases 2 and 3 add hard negatives: for each caption, `hard_negatives` copies with one shape word
swapped for another shape (`captions.swapped_caption`), so colours and backgrounds cannot tell a
batch apart and only the shapes can (as NegCLIP does for word order).

Initialisation: open_clip's `ModifiedResNet` zeroes every bottleneck's last batch-norm gain; with
one block per stage the tower then starts as 1×1 convolutions behind the stem, and it did not
learn at all. The gains start at one instead.

The model sees 128-pixel inputs (world images are resized from 224, as `zeroshot` resizes any
image to the checkpoint's size): four times cheaper than 224 on a CPU, and shapes of 14–112 px
become 8–64 px. Training images are rendered once before training by every CPU core, then
reused over epochs; the tower runs in channels-last memory format (mkldnn's fast path for small
convolutions).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
import torch.nn.functional as F

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.core.progress import progress_bar
from regionclip_cli.synthetic.captions import mentioned_categories, swapped_caption
from regionclip_cli.synthetic.categories import WORLD_CATEGORIES
from regionclip_cli.synthetic.world import WorldConfig, world_image

MODEL_NAME = "world-tiny"
INPUT_SIZE = 128  # the model's input side (its open_clip config's image_size)
TRAIN_WORLD_SEED = 1_000_003  # scenes of phases 2 and 3; phase 1's single shapes use the next seed
EVAL_WORLD_SEED = 0


@dataclass
class TeacherConfig:
    tagging_steps: int = 3000  # phase 1 (see the module docstring)
    locked_steps: int = 600  # phase 2
    clip_steps: int = 600  # phase 3
    batch_size: int = 64
    lr: float = 2e-3  # phases 1 and 2
    clip_lr: float = 3e-4  # phase 3
    weight_decay: float = 0.05
    warmup_steps: int = 50  # at the start of each phase
    hard_negatives: int = 3  # shape-swapped captions per caption, phases 2 and 3
    seed: int = 0
    world_seed: int = TRAIN_WORLD_SEED
    pool_images: int = 40_000  # images rendered per phase kind; reused over epochs
    scene_objects: int = 2  # most shapes per image in phases 2 and 3
    min_object_size: float = 32.0  # pixels of the 224-px world image; the default world's is 14
    threads: int = 0  # torch threads; 0 keeps torch's default

    @property
    def steps(self) -> int:
        return self.tagging_steps + self.locked_steps + self.clip_steps

    def check(self) -> None:
        if self.steps < 1:
            raise RegionclipError("the teacher needs at least one step: --tagging-steps, --locked-steps "
                                  "and --clip-steps are all 0")
        if self.pool_images < self.batch_size:
            raise RegionclipError(f"--pool-images ({self.pool_images}) must be at least --batch-size "
                                  f"({self.batch_size})")


def register_world_config() -> None:
    """Make `open_clip.create_model("world-tiny")` work (configs in regionclip_cli/model_configs)."""
    import open_clip

    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(Path(str(resources.files("regionclip_cli") / "model_configs")))


def create_world_model(state_dict: dict[str, torch.Tensor] | None = None,
                       device: torch.device | str = "cpu") -> torch.nn.Module:
    """A world-tiny CLIP, random or loaded (strictly) from `state_dict`, cast to float32."""
    import open_clip

    register_world_config()
    logging.disable(logging.WARNING)  # open_clip warns that no pretrained weights were loaded
    try:
        model = open_clip.create_model(MODEL_NAME)
    finally:
        logging.disable(logging.NOTSET)
    if state_dict is not None:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()})
    return model.to(device=device, memory_format=torch.channels_last)


def shipped_teacher_path() -> Path:
    return Path(str(resources.files("regionclip_cli") / "assets" / "world-tiny.pt"))


def _normaliser(model: torch.nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    mean = getattr(model.visual, "image_mean", None) or OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or OPENAI_DATASET_STD
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1),
            torch.tensor(std, device=device).view(1, 3, 1, 1))


def pixels_to_tensor(pixels: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [N, H, W, 3] (already at the model's size) → a normalised channels-last float batch."""
    batch = torch.from_numpy(pixels).to(mean.device).permute(0, 3, 1, 2).float().div_(255)
    return ((batch - mean) / std).contiguous(memory_format=torch.channels_last)


def images_to_tensor(images: list, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """PIL images (already at the model's size) → a normalised channels-last float batch."""
    return pixels_to_tensor(np.stack([np.asarray(im, dtype=np.uint8) for im in images]), mean, std)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """CLIP's recipe: no weight decay on gains, biases, embeddings and the logit scale."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        exempt = param.ndim < 2 or "embedding" in name or "logit_scale" in name or ".bn" in name
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _schedule(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to zero, within one phase."""
    warmup = min(warmup, max(1, steps // 10))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def start_residual_gains_at_one(visual: torch.nn.Module) -> None:
    """Undo open_clip's zero-initialised last batch-norm gain of every bottleneck (see the module
    docstring): with one block per stage, a zero gain leaves the residual branches dead."""
    for name, module in visual.named_modules():
        if name.endswith(".bn3"):
            torch.nn.init.ones_(module.weight)


@dataclass
class ImagePool:
    """Training images rendered once: uint8 pixels [N, S, S, 3] at the model's input size, and
    each image's captions."""

    pixels: np.ndarray
    captions: list[list[str]]

    def batches(self, steps: int, batch_size: int, rng: np.random.Generator):
        """Index arrays of `batch_size` images, a fresh permutation every epoch."""
        order, position = rng.permutation(len(self.captions)), 0
        for _ in range(steps):
            if position + batch_size > len(order):
                order, position = rng.permutation(len(self.captions)), 0
            yield np.sort(order[position:position + batch_size])
            position += batch_size


def _render_chunk(args: tuple[WorldConfig, int, int, int]) -> tuple[np.ndarray, list[list[str]]]:
    from PIL import Image

    world, start, stop, size = args
    items = [world_image(world, index) for index in range(start, stop)]
    pixels = np.stack([np.asarray(it.image.resize((size, size), Image.Resampling.BILINEAR)) for it in items])
    return pixels, [it.captions for it in items]


def render_pool(world: WorldConfig, size: int, on_chunk: Callable[[int], None] = lambda n: None) -> ImagePool:
    """All `world.num_images` images, resized bilinearly to `size` (as `zeroshot` resizes), rendered
    by one process per CPU core."""
    chunk = 500
    jobs = [(world, start, min(world.num_images, start + chunk), size) for start in range(0, world.num_images, chunk)]
    pixels = np.empty((world.num_images, size, size, 3), np.uint8)
    captions: list[list[str]] = []
    with ProcessPoolExecutor(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        for (_, start, stop, _), (block, texts) in zip(jobs, pool.map(_render_chunk, jobs)):
            pixels[start:stop] = block
            captions.extend(texts)
            on_chunk(stop - start)
    return ImagePool(pixels, captions)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              negative_text: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching (image, caption) pairs; `negative_text` adds
    captions that match no image to the image→text side."""
    logits = logit_scale.exp() * image_features @ text_features.T
    labels = torch.arange(len(logits), device=logits.device)
    image_to_text = logits if negative_text is None or not len(negative_text) else \
        torch.cat([logits, logit_scale.exp() * image_features @ negative_text.T], dim=1)
    return (F.cross_entropy(image_to_text, labels) + F.cross_entropy(logits.T, labels)) / 2


def _adamw(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


class _TeacherTraining:
    """The three phases over one model; `report(phase, loss)` is called after every step."""

    def __init__(self, config: TeacherConfig, device: torch.device, report: Callable[[str, float], None]):
        import open_clip

        self.config, self.device, self.report = config, device, report
        torch.manual_seed(config.seed)
        self.model = create_world_model(device=device).train()
        start_residual_gains_at_one(self.model.visual)
        self.tokenizer = open_clip.get_tokenizer(MODEL_NAME)
        self.mean, self.std = _normaliser(self.model, device)
        self.order = np.random.default_rng(config.seed)
        self.pick = random.Random(f"teacher-captions:{config.seed}")

    def tagging(self, pool: ImagePool) -> None:
        """Phase 1: cross-entropy on the one shape each single-shape image's captions name."""
        config = self.config
        named = [set().union(*(mentioned_categories(c) for c in texts)) for texts in pool.captions]
        keep = np.array([k for k, ids in enumerate(named) if len(ids) == 1])
        pool = ImagePool(pool.pixels[keep], [pool.captions[k] for k in keep])
        labels = torch.tensor([next(iter(named[k])) - 1 for k in keep], device=self.device)
        head = torch.nn.Linear(self.model.visual.output_dim, len(WORLD_CATEGORIES)).to(self.device)
        optimizer = _adamw([{"params": [*self.model.visual.parameters(), *head.parameters()],
                             "weight_decay": config.weight_decay}], config.lr)
        for step, index in enumerate(pool.batches(config.tagging_steps, config.batch_size, self.order)):
            self._set_lr(optimizer, _schedule(step, config.tagging_steps, config.lr, config.warmup_steps))
            logits = 10 * head(self.model.encode_image(pixels_to_tensor(pool.pixels[index], self.mean, self.std), normalize=True))
            loss = F.cross_entropy(logits, labels[torch.from_numpy(index).to(self.device)])
            self._step(optimizer, loss)
            self.report("tagging warm-up", loss.item())

    def contrastive(self, pool: ImagePool, locked: bool) -> None:
        """Phase 2 (`locked`: text tower only) or 3 (everything): InfoNCE with hard negatives."""
        config, model = self.config, self.model
        steps, peak = (config.locked_steps, config.lr) if locked else (config.clip_steps, config.clip_lr)
        if locked:
            model.visual.eval().requires_grad_(False)
            params = [p for name, p in model.named_parameters() if not name.startswith("visual.")]
            groups = [{"params": params, "weight_decay": config.weight_decay}]
        else:
            model.visual.train().requires_grad_(True)
            groups = _param_groups(model, config.weight_decay)
        optimizer = _adamw(groups, peak)
        for step, index in enumerate(pool.batches(steps, config.batch_size, self.order)):
            self._set_lr(optimizer, _schedule(step, steps, peak, config.warmup_steps))
            captions = [self.pick.choice(pool.captions[k]) for k in index]
            negatives = [swap for c in captions for swap in
                         (swapped_caption(c, self.pick) for _ in range(config.hard_negatives)) if swap]
            with torch.set_grad_enabled(not locked):
                images = model.encode_image(pixels_to_tensor(pool.pixels[index], self.mean, self.std), normalize=True)
            text = model.encode_text(self.tokenizer(captions + negatives).to(self.device), normalize=True)
            loss = clip_loss(images, text[:len(captions)], model.logit_scale, text[len(captions):])
            self._step(optimizer, loss)
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            self.report("locked-image text" if locked else "CLIP", loss.item())

    @staticmethod
    def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr

    @staticmethod
    def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def train_teacher(config: TeacherConfig, device: torch.device, progress: bool = True,
                  history: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Train world-tiny from scratch in three phases; return its float32 state dict.

    Losses go to `history`.
    """
    config.check()
    if config.threads:
        torch.set_num_threads(config.threads)
    pool_size = min(config.pool_images, config.steps * config.batch_size)
    singles = WorldConfig(num_images=pool_size, seed=config.world_seed + 1, max_objects=1,
                          min_object_size=config.min_object_size)
    scenes = WorldConfig(num_images=pool_size, seed=config.world_seed, max_objects=config.scene_objects,
                         min_object_size=config.min_object_size)
    singles.check()
    scenes.check()
    with progress_bar(disable=not progress) as bar:
        rendering = bar.add_task("rendering training images", unit="img", status="",
                                 total=pool_size * ((config.tagging_steps > 0) + (config.steps > config.tagging_steps)))
        task = bar.add_task("training teacher", total=config.steps * config.batch_size, unit="img", status="")

        def report(phase: str, loss: float) -> None:
            if history is not None:
                history.append(loss)
            bar.update(task, advance=config.batch_size, status=f"{phase} loss {loss:.3f}")

        training = _TeacherTraining(config, device, report)
        if config.tagging_steps:
            training.tagging(render_pool(singles, INPUT_SIZE, lambda n: bar.update(rendering, advance=n)))
        if config.locked_steps or config.clip_steps:
            pool = render_pool(scenes, INPUT_SIZE, lambda n: bar.update(rendering, advance=n))
            if config.locked_steps:
                training.contrastive(pool, locked=True)
            if config.clip_steps:
                training.contrastive(pool, locked=False)
    return {k: v.detach().cpu() for k, v in training.model.state_dict().items()}


def save_teacher(path: str | Path, state_dict: dict[str, torch.Tensor], config: TeacherConfig,
                 half: bool = True, seconds: float | None = None) -> None:
    """Write a regionclip checkpoint; fp16 floats (recorded as metadata "dtype") keep it small."""
    from regionclip_cli.modeling.checkpoints import Checkpoint, save_checkpoint

    tensors = {k: v.half() if half and v.is_floating_point() else v for k, v in state_dict.items()}
    metadata = {
        "input_min_size": INPUT_SIZE,
        "input_max_size": INPUT_SIZE,
        "trained_on": "synthetic world",
        "teacher_config": asdict(config),
        "world_seed": config.world_seed,
        "dtype": "float16" if half else "float32",
    }
    if seconds is not None:
        metadata["training_seconds"] = round(seconds, 1)
    save_checkpoint(path, Checkpoint(kind="clip", model=MODEL_NAME, state_dict=tensors, metadata=metadata))


def load_teacher(path: str | Path | None = None, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The shipped teacher (or a checkpoint written by `save_teacher`) in eval mode, float32."""
    from regionclip_cli.modeling.checkpoints import load_checkpoint

    checkpoint = load_checkpoint(path or shipped_teacher_path())
    return create_world_model(checkpoint.state_dict, device).eval()


@torch.no_grad()
def caption_retrieval(model: Union[torch.nn.Module, dict[str, torch.Tensor]], num_images: int = 300,
                      seed: int = EVAL_WORLD_SEED, device: torch.device | str = "cpu",
                      batch_size: int = 50) -> dict[str, float]:
    """Whole-image figures on world images: image→caption and caption→image recall@1/5, and
    zero-shot accuracy on each image's largest object ("a photo of a {name}.", all categories).

    An image→caption hit is any of the image's own captions in the top k; a caption→image hit is
    its own image in the top k. These are the baseline RegionCLIP's region-level training must
    beat at regions, where a whole-image CLIP is weak.
    """
    import open_clip
    from PIL import Image

    device = torch.device(device)
    if isinstance(model, dict):
        model = create_world_model(model, device)
    model = model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    mean, std = _normaliser(model, device)
    world = WorldConfig(num_images=num_images, seed=seed)
    items = [world_image(world, i) for i in range(num_images)]
    resized = [it.image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR) for it in items]
    image_features = torch.cat([
        model.encode_image(images_to_tensor(resized[i:i + batch_size], mean, std), normalize=True)
        for i in range(0, num_images, batch_size)])
    captions = [c for it in items for c in it.captions]
    owner = torch.tensor([k for k, it in enumerate(items) for _ in it.captions], device=device)
    text_features = torch.cat([model.encode_text(tokenizer(captions[i:i + 256]).to(device), normalize=True)
                               for i in range(0, len(captions), 256)])
    similarity = image_features @ text_features.T  # images × captions

    def recall(k: int) -> tuple[float, float]:
        top_captions = similarity.topk(k, dim=1).indices  # per image
        i2t = (owner[top_captions] == torch.arange(num_images, device=device)[:, None]).any(1)
        top_images = similarity.T.topk(min(k, num_images), dim=1).indices  # per caption
        t2i = (top_images == owner[:, None]).any(1)
        return i2t.float().mean().item(), t2i.float().mean().item()

    (i2t1, t2i1), (i2t5, t2i5) = recall(1), recall(5)
    prompts = tokenizer([f"a photo of a {c.name}." for c in WORLD_CATEGORIES]).to(device)
    class_features = model.encode_text(prompts, normalize=True)
    predicted = (image_features @ class_features.T).argmax(1).cpu()
    truth = torch.tensor([max(it.objects, key=lambda o: o.area).category_id - 1 for it in items])
    correct = predicted == truth
    split = torch.tensor([WORLD_CATEGORIES[t].split == "novel" for t in truth.tolist()])
    return {
        "num_images": num_images,
        "num_captions": len(captions),
        "image_to_caption_r1": i2t1,
        "image_to_caption_r5": i2t5,
        "caption_to_image_r1": t2i1,
        "caption_to_image_r5": t2i5,
        "zeroshot_accuracy": correct.float().mean().item(),
        "zeroshot_accuracy_base": correct[~split].float().mean().item() if (~split).any() else float("nan"),
        "zeroshot_accuracy_novel": correct[split].float().mean().item() if split.any() else float("nan"),
        "chance_accuracy": 1 / len(WORLD_CATEGORIES),
    }


def train_and_save(path: str | Path, config: TeacherConfig, device: torch.device, progress: bool = True) -> float:
    """Train, save (fp16) and return the training time in seconds."""
    start = time.perf_counter()
    state_dict = train_teacher(config, device, progress)
    seconds = time.perf_counter() - start
    save_teacher(path, state_dict, config, seconds=seconds)
    return seconds
