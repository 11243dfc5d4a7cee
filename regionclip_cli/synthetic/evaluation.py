"""How well a world CLIP recognises shapes: whole images vs regions, on held-out world seeds.

Two figures, the analogue of the paper's CLIP RN50 on ImageNet images (59.6) vs on LVIS regions
with ground-truth boxes (19.1):

- *image top-1*: single-shape images (world seed `IMAGE_SEED`) whose shape is at least 40 px, a
  prominent object as in an ImageNet photo (`--image-min-object-size 14` admits every size of the
  default world); the whole image, embedded by the attention pool as `encode_image` does, against
  the 20 category names (CLIP's 81-prompt ensemble).
- *region top-1*: the default cluttered world (seed `REGION_SEED`, 1–6 shapes of 14–112 px); each
  ground-truth box embedded by the region encoder (trunk once per image, RoIAlign, layer4, the
  attention pool), against the same names; also by COCO size (small < 32², medium < 96² pixels of
  the 224-px image, large beyond).

Images are resized to the size the checkpoint recommends (bilinear, as `zeroshot` does), or to
`input_size`: the paper measures CLIP's regions at the detector's input, far above the size CLIP
was trained at, and the world's teacher too names more regions at the world's native 224 px.
Predictions are over all 20 categories; a model that guesses gets 1/20 = 5 % on every split.
Neither seed is one the teacher trains on (`teacher.TRAIN_WORLD_SEED` and the next).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from regionclip_cli.synthetic.categories import WORLD_CATEGORIES
from regionclip_cli.synthetic.world import WorldConfig, world_image

IMAGE_SEED = 7
REGION_SEED = 0
SIZE_BINS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, float("inf")))


@dataclass
class EvaluationConfig:
    image_count: int = 400  # single-shape images for image top-1
    region_images: int = 200  # default-world images for region top-1 (about 3 boxes each)
    image_seed: int = IMAGE_SEED
    region_seed: int = REGION_SEED
    image_min_object_size: float = 40.0  # pixels of the 224-px image (the default world's smallest is 14)
    batch_size: int = 25
    input_size: int | None = None  # square input the images are resized to; None: the checkpoint's


def _top1_table(correct: torch.Tensor, truth: torch.Tensor, areas: torch.Tensor | None = None) -> dict:
    novel = torch.tensor([WORLD_CATEGORIES[t].split == "novel" for t in truth.tolist()], dtype=torch.bool)
    groups = {"all": torch.ones_like(novel), "base": ~novel, "novel": novel}
    if areas is not None:
        groups.update({name: (areas >= low) & (areas < high) for name, low, high in SIZE_BINS})
    return {name: {"top1": correct[mask].float().mean().item() if mask.any() else float("nan"),
                   "count": int(mask.sum())} for name, mask in groups.items()}


@torch.no_grad()
def _predict(clip, items: list, boxes_of, class_features: torch.Tensor, batch_size: int, size: int) -> torch.Tensor:
    """Top-1 category (0-based) of every box, image by image, box by box, at `size` x `size` input."""
    from PIL import Image

    from regionclip_cli.modeling.region_encoder import RegionEncoder
    from regionclip_cli.synthetic.teacher import images_to_tensor

    encoder = RegionEncoder(clip.model.visual)
    mean = torch.tensor(clip.mean, device=clip.device).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, device=clip.device).view(1, 3, 1, 1)
    predictions = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = images_to_tensor([it.image if it.image.size == (size, size) else
                                  it.image.resize((size, size), Image.Resampling.BILINEAR) for it in chunk], mean, std)
        boxes = [boxes_of(it).to(clip.device) * (size / it.image.width) for it in chunk]
        features = torch.nn.functional.normalize(encoder(batch, boxes).float(), dim=-1)
        predictions.append((features @ class_features.T).argmax(1).cpu())
    return torch.cat(predictions)


def evaluate_world_clip(clip, config: EvaluationConfig = EvaluationConfig(), progress: bool = False) -> dict:
    """Image and region top-1 of a loaded world CLIP (`modeling.clip.LoadedClip`) on held-out seeds."""
    from regionclip_cli.modeling.text import embed_names, ensemble_templates

    names = [c.name for c in WORLD_CATEGORIES]
    size = config.input_size or clip.input_min_size or clip.image_size
    class_features = embed_names(clip, names, ensemble_templates(), progress=progress).to(clip.device)

    singles = [world_image(WorldConfig(seed=config.image_seed, max_objects=1,
                                       min_object_size=config.image_min_object_size), i)
               for i in range(config.image_count)]
    whole = _predict(clip, singles, lambda it: torch.tensor([[0.0, 0.0, it.image.width, it.image.height]]),
                     class_features, config.batch_size, size)
    image_truth = torch.tensor([it.objects[0].category_id - 1 for it in singles])

    scenes = [world_image(WorldConfig(seed=config.region_seed), i) for i in range(config.region_images)]
    regions = _predict(clip, scenes, lambda it: torch.tensor([o.box for o in it.objects]), class_features,
                       config.batch_size, size)
    region_truth = torch.tensor([o.category_id - 1 for it in scenes for o in it.objects])
    areas = torch.tensor([o.area for it in scenes for o in it.objects])
    return {
        "model": clip.identity,
        "input_size": size,
        "image": _top1_table(whole == image_truth, image_truth),
        "region": _top1_table(regions == region_truth, region_truth, areas),
        "chance": 1 / len(WORLD_CATEGORIES),
        "config": {"image_count": config.image_count, "region_images": config.region_images,
                   "image_seed": config.image_seed, "region_seed": config.region_seed,
                   "image_min_object_size": config.image_min_object_size},
    }
