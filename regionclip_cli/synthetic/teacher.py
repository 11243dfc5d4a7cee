"""The world's CLIP teacher: a tiny open_clip model trained on world image–caption pairs.

RegionCLIP needs a CLIP that understands whole images; no pretrained weights can be downloaded
here, so we train one: symmetric InfoNCE between images and one caption each, learnable logit
scale, AdamW with warmup + cosine decay, fresh world images every step (no image is seen twice, so
it cannot overfit). Training images come from world seed `TRAIN_WORLD_SEED`, with fewer and larger
shapes than the default world (as CLIP's web photos are mostly of one or two prominent things);
evaluation uses other seeds (0 by default) of the default world, so the figures are on unseen
images with small shapes and clutter.

Training runs in two phases, because the plain recipe never learned shapes on a CPU budget
(measured: at chance, 5%, after 500 to 2,500 steps):

1. *Naming warm-up* (`naming_steps`). The image tower ends in a global max-pool + linear head
   instead of its attention pool, and each caption only names the shapes ("a disc and two
   stars"). The attention pool starts out as an average over the whole grid, in which a shape is a
   few percent of the signal: even supervised shape classification through it stayed at chance
   for 600 steps, while through a max-pool head it learned from step ~400. And full captions let
   colours and backgrounds tell a batch apart, so shapes come last; naming captions leave only
   the shapes.
2. *CLIP phase* (the remaining steps). The real attention pool (freshly initialised) replaces the
   head, and captions are the world's full ones; the trunk and text tower carry on from phase 1.

Two details make it fit a shared 2-core CPU: the model runs in channels-last memory format
(mkldnn's fast path for small convolutions) and on one thread by default (with other jobs on the
machine, OpenMP's barriers make two threads several times *slower* than one), while one
background process renders the next batches.
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

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.core.progress import progress_bar
from regionclip_cli.synthetic.captions import naming_caption
from regionclip_cli.synthetic.categories import WORLD_CATEGORIES
from regionclip_cli.synthetic.world import WorldConfig, world_image

MODEL_NAME = "world-tiny"
TRAIN_WORLD_SEED = 1_000_003
EVAL_WORLD_SEED = 0


@dataclass
class TeacherConfig:
    steps: int = 3000  # both phases together
    naming_steps: int = 2000  # phase 1: max-pool head, naming captions (see the module docstring)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100  # at the start of each phase
    seed: int = 0
    world_seed: int = TRAIN_WORLD_SEED
    image_size: int = 224
    max_objects: int = 2  # objects per training image
    min_object_size: float = 40.0  # pixels; larger than the default world's 14
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


def images_to_tensor(images: list, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """PIL images (already at the model's size) → a normalised channels-last float batch."""
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


def max_pool_head(model: torch.nn.Module) -> torch.nn.Module:
    """Phase 1's stand-in for the attention pool: global max over the grid, then a linear map."""
    pool = model.visual.attnpool
    return torch.nn.Sequential(torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(pool.c_proj.in_features, pool.c_proj.out_features))


def _render(world: WorldConfig, start: int, stop: int) -> list:
    return [world_image(world, index) for index in range(start, stop)]


def _batches(world: WorldConfig, steps: int, batch_size: int) -> Iterator[list]:
    """Each step's images, rendered two steps ahead in one background process."""
    with ProcessPoolExecutor(1) as pool:
        pending = deque(pool.submit(_render, world, s * batch_size, (s + 1) * batch_size)
                        for s in range(min(2, steps)))
        for step in range(steps):
            items = pending.popleft().result()
            if step + 2 < steps:
                pending.append(pool.submit(_render, world, (step + 2) * batch_size, (step + 3) * batch_size))
            yield items


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching (image, caption) pairs."""
    logits = logit_scale.exp() * image_features @ text_features.T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def train_teacher(config: TeacherConfig, device: torch.device, progress: bool = True,
                  history: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Train world-tiny from scratch in two phases; return its float32 state dict.

    Losses go to `history`.
    """
    import open_clip

    config.check()
    world = WorldConfig(num_images=config.steps * config.batch_size, image_size=config.image_size,
                        seed=config.world_seed, max_objects=config.max_objects,
                        min_object_size=config.min_object_size)
    world.check()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = create_world_model(device=device).train()
    attention_pool = model.visual.attnpool
    if config.naming_steps:
        model.visual.attnpool = max_pool_head(model).to(device)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    mean, std = _normaliser(model, device)
    optimizer = _optimizer(model, config)
    pick = random.Random(f"teacher-captions:{config.seed}")
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("training teacher", total=config.steps * config.batch_size, unit="img", status="")
        for step, items in enumerate(_batches(world, config.steps, config.batch_size)):
            naming = step < config.naming_steps
            if step == config.naming_steps and step > 0:
                model.visual.attnpool = attention_pool
                optimizer = _optimizer(model, config)
            images = images_to_tensor([it.image for it in items], mean, std)
            captions = [naming_caption(it.objects, pick) if naming else pick.choice(it.captions) for it in items]
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, config)
            loss = clip_loss(model.encode_image(images, normalize=True),
                             model.encode_text(tokenizer(captions).to(device), normalize=True), model.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            if history is not None:
                history.append(loss.item())
            phase = "naming warm-up" if naming else "CLIP"
            bar.update(task, advance=config.batch_size, status=f"{phase} loss {loss.item():.3f}")
    model.visual.attnpool = attention_pool
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _optimizer(model: torch.nn.Module, config: TeacherConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def save_teacher(path: str | Path, state_dict: dict[str, torch.Tensor], config: TeacherConfig,
                 half: bool = True, seconds: float | None = None) -> None:
    """Write a regionclip checkpoint; fp16 floats (recorded as metadata "dtype") keep it small."""
    from regionclip_cli.modeling.checkpoints import Checkpoint, save_checkpoint

    tensors = {k: v.half() if half and v.is_floating_point() else v for k, v in state_dict.items()}
    metadata = {
        "input_min_size": config.image_size,
        "input_max_size": config.image_size,
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
    world = WorldConfig(num_images=num_images, seed=seed)
    items = [world_image(world, i) for i in range(num_images)]
    image_features = torch.cat([
        model.encode_image(images_to_tensor([it.image for it in items[i:i + batch_size]], mean, std), normalize=True)
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
