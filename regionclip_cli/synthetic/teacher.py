"""The world's CLIP teacher: a tiny open_clip model trained on world image–caption pairs.

RegionCLIP needs a CLIP that understands whole images; no pretrained weights can be downloaded
here, so we train one from scratch on fresh world images (no image is seen twice, so it cannot
overfit). Training images come from world seeds `TRAIN_WORLD_SEED` and the next one, with fewer
and larger shapes than the default world (as CLIP's web photos are mostly of one or two prominent
things); evaluation uses other seeds of the default world (`synthetic.evaluation`).

Three choices make it learn on a CPU budget (each measured; without any one of them the tower
stayed at chance, 5 %, for hundreds of steps):

- *Residual branches switched on.* open_clip's `ModifiedResNet.init_parameters` zeroes every
  bottleneck's last batch-norm gain, so that deep towers start as identities; with one block per
  stage that leaves only the 1×1 shortcuts and average pools behind the stem, and the tower does
  not learn shapes. `create_world_model` sets those gains to one.
- *A small input* (`image_size` 128 in `model_configs/world-tiny.json`): a third of the compute
  of 224, so three times the steps; world images (224 px) are resized to it, as `zeroshot` and
  `pretrain` do with the size the checkpoint recommends.
- *A naming warm-up* (`naming_steps`) before the CLIP phase: single-shape images, each classified
  against the text tower's embeddings of the 20 category names in random prompt templates
  ("a sketch of a hexagon."), cross-entropy at CLIP's logit scale. Full captions let colours and
  backgrounds tell a batch apart, so a from-scratch CLIP learns shapes last; naming gives both
  towers the shapes first. The final phase is plain CLIP: symmetric InfoNCE between images with up
  to `max_objects` shapes and one of their full captions, learnable logit scale, AdamW with
  warmup and cosine decay (restarted per phase).

The model runs in channels-last memory format (mkldnn's fast path for small convolutions) on one
thread by default (with other jobs on the machine, OpenMP's barriers make two threads slower than
one), while one background process renders the next batches.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.core.progress import progress_bar
from regionclip_cli.synthetic.categories import WORLD_CATEGORIES
from regionclip_cli.synthetic.world import WorldConfig, world_image

MODEL_NAME = "world-tiny"
TRAIN_WORLD_SEED = 1_000_003  # phase 1 renders from this seed, the CLIP phase from the next one
EVAL_WORLD_SEED = 0
WORLD_IMAGE_SIZE = 224  # training images are rendered as the default world is, then resized


@dataclass
class TeacherConfig:
    steps: int = 4000  # both phases together
    naming_steps: int = 2500  # phase 1: single shapes named against the class prompts
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100  # at the start of each phase
    seed: int = 0
    world_seed: int = TRAIN_WORLD_SEED
    max_objects: int = 3  # objects per image in the CLIP phase (phase 1 images hold one)
    min_object_size: float = 28.0  # pixels at 224; larger than the default world's 14
    threads: int = 1  # torch threads; 0 keeps torch's default

    def check(self) -> None:
        if not 0 <= self.naming_steps <= self.steps:
            raise RegionclipError(f"--naming-steps must be between 0 and --steps ({self.steps}); got {self.naming_steps}")


def register_world_config() -> None:
    """Make `open_clip.create_model("world-tiny")` work (configs in regionclip_cli/model_configs)."""
    import open_clip

    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(Path(str(resources.files("regionclip_cli") / "model_configs")))


def create_world_model(state_dict: dict[str, torch.Tensor] | None = None,
                       device: torch.device | str = "cpu") -> torch.nn.Module:
    """A world-tiny CLIP, freshly initialised or loaded (strictly) from `state_dict`, in float32.

    A fresh model gets every bottleneck's last batch-norm gain set to one instead of open_clip's
    zero (see the module docstring): with one block per stage, zero gains leave no 3×3 path.
    """
    import open_clip

    register_world_config()
    logging.disable(logging.WARNING)  # open_clip warns that no pretrained weights were loaded
    try:
        model = open_clip.create_model(MODEL_NAME)
    finally:
        logging.disable(logging.NOTSET)
    if state_dict is None:
        for name, param in model.visual.named_parameters():
            if name.startswith("layer") and name.endswith("bn3.weight"):
                torch.nn.init.ones_(param)
    else:
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


def resize_square(image: Image.Image, size: int) -> Image.Image:
    """A square world image at the model's input side, resampled as `zeroshot` does (bilinear)."""
    return image if image.size == (size, size) else image.resize((size, size), Image.Resampling.BILINEAR)


def images_to_tensor(images: list, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Pictures or [H, W, 3] uint8 arrays (all one size) → a normalised channels-last float batch."""
    pixels = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images]))
    batch = pixels.to(mean.device).permute(0, 3, 1, 2).float().div_(255)
    return ((batch - mean) / std).contiguous(memory_format=torch.channels_last)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """CLIP's recipe: no weight decay on gains, biases, embeddings and the logit scale."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        exempt = param.ndim < 2 or "embedding" in name or "logit_scale" in name or ".bn" in name
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, config: TeacherConfig) -> float:
    """Warmup then cosine decay, restarted at the start of the CLIP phase."""
    phase_start, phase_steps = (0, config.naming_steps) if step < config.naming_steps else \
        (config.naming_steps, config.steps - config.naming_steps)
    step -= phase_start
    warmup = min(config.warmup_steps, max(1, phase_steps // 10))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, phase_steps - warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class _Sample:
    pixels: np.ndarray  # [S, S, 3] uint8 at the model's input size
    label: int  # 0-based category of the largest object
    captions: list[str]


def _render(world: WorldConfig, start: int, stop: int, size: int) -> list[_Sample]:
    samples = []
    for index in range(start, stop):
        item = world_image(world, index)
        largest = max(item.objects, key=lambda o: o.area)
        samples.append(_Sample(np.asarray(resize_square(item.image, size)), largest.category_id - 1, item.captions))
    return samples


def _batches(worlds: list[tuple[WorldConfig, int]], batch_size: int, size: int) -> Iterator[list[_Sample]]:
    """`steps` batches from each (world, steps) in turn, rendered two ahead in one background process."""
    jobs = [(world, step) for world, steps in worlds for step in range(steps)]

    def submit(pool: ProcessPoolExecutor, job: tuple[WorldConfig, int]):
        world, step = job
        return pool.submit(_render, world, step * batch_size, (step + 1) * batch_size, size)

    with ProcessPoolExecutor(1) as pool:
        pending = deque(submit(pool, job) for job in jobs[:2])
        for k in range(len(jobs)):
            samples = pending.popleft().result()
            if k + 2 < len(jobs):
                pending.append(submit(pool, jobs[k + 2]))
            yield samples


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching (image, caption) pairs."""
    logits = logit_scale.exp() * image_features @ text_features.T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def naming_prompts(rng: random.Random) -> list[str]:
    """One prompt per category, each in a random one of CLIP's templates and a random name form."""
    from regionclip_cli.modeling.text import ensemble_templates

    templates = ensemble_templates()
    prompts = []
    for category in WORLD_CATEGORIES:
        name = category.name if rng.random() < 0.7 else rng.choice(category.synonyms or (category.name,))
        prompts.append(rng.choice(templates).format(name))
    return prompts


def train_teacher(config: TeacherConfig, device: torch.device, progress: bool = True,
                  history: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Train world-tiny from scratch in two phases; return its float32 state dict.

    Losses go to `history`.
    """
    import open_clip

    config.check()
    common = dict(image_size=WORLD_IMAGE_SIZE, min_object_size=config.min_object_size)
    naming_world = WorldConfig(num_images=max(1, config.naming_steps * config.batch_size), seed=config.world_seed,
                               max_objects=1, **common)
    clip_steps = config.steps - config.naming_steps
    clip_world = WorldConfig(num_images=max(1, clip_steps * config.batch_size), seed=config.world_seed + 1,
                             max_objects=config.max_objects, **common)
    naming_world.check()
    clip_world.check()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = create_world_model(device=device).train()
    size = int(model.visual.image_size)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    mean, std = _normaliser(model, device)
    optimizer = _optimizer(model, config)
    pick = random.Random(f"teacher-captions:{config.seed}")
    batches = _batches([(naming_world, config.naming_steps), (clip_world, clip_steps)], config.batch_size, size)
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("training teacher", total=config.steps * config.batch_size, unit="img", status="")
        for step, samples in enumerate(batches):
            naming = step < config.naming_steps
            if step == config.naming_steps and step > 0:
                optimizer = _optimizer(model, config)  # fresh moments for the new objective
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, config)
            image_features = model.encode_image(images_to_tensor([s.pixels for s in samples], mean, std),
                                                normalize=True)
            if naming:
                text_features = model.encode_text(tokenizer(naming_prompts(pick)).to(device), normalize=True)
                labels = torch.tensor([s.label for s in samples], device=device)
                loss = F.cross_entropy(model.logit_scale.exp() * image_features @ text_features.T, labels)
            else:
                captions = [pick.choice(s.captions) for s in samples]
                text_features = model.encode_text(tokenizer(captions).to(device), normalize=True)
                loss = clip_loss(image_features, text_features, model.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            if history is not None:
                history.append(loss.item())
            phase = "naming warm-up" if naming else "CLIP"
            bar.update(task, advance=config.batch_size, status=f"{phase} loss {loss.item():.3f}")
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _optimizer(model: torch.nn.Module, config: TeacherConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def save_teacher(path: str | Path, state_dict: dict[str, torch.Tensor], config: TeacherConfig,
                 half: bool = True, seconds: float | None = None) -> None:
    """Write a regionclip checkpoint; fp16 floats (recorded as metadata "dtype") keep it small.

    The recommended input size is the attention pool's: world images are resized to it.
    """
    from regionclip_cli.modeling.checkpoints import Checkpoint, save_checkpoint

    size = math.isqrt(state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) * 32
    tensors = {k: v.half() if half and v.is_floating_point() else v for k, v in state_dict.items()}
    metadata = {
        "input_min_size": size,
        "input_max_size": size,
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

    device = torch.device(device)
    if isinstance(model, dict):
        model = create_world_model(model, device)
    model = model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    mean, std = _normaliser(model, device)
    size = int(model.visual.image_size)
    world = WorldConfig(num_images=num_images, seed=seed)
    items = [world_image(world, i) for i in range(num_images)]
    image_features = torch.cat([
        model.encode_image(images_to_tensor([resize_square(it.image, size) for it in items[i:i + batch_size]],
                                            mean, std), normalize=True)
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
