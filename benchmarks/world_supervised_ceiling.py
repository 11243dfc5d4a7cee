"""The most a world-tiny student can learn about regions in a given budget: true labels, every class.

RegionCLIP's student learns regions from noisy pseudo labels of the caption-named shapes. This
trains the same student (the shipped teacher's image tower, stem and layer1 frozen, frozen
BatchNorm, AdamW) on the *true* class of every ground-truth box of the pretraining world, novel
shapes included, with cross-entropy over the 20 class names' text embeddings (cosine / 0.01). It
is no open-vocabulary result (novel labels are seen); it is the ceiling that tells whether a
student's region top-1 is limited by its labels or by its model, input size and budget.

    python benchmarks/world_supervised_ceiling.py --iterations 2000 --lr 1e-3   # the world recipe's budget
    python benchmarks/world_supervised_ceiling.py --iterations 250 --lr 1e-4    # the defaults: an earlier one

Region top-1 is measured as `world evaluate-teacher` measures it, on the fresh worlds of
`world_claim.py --fresh-worlds` (200 images each); chance is 5 %.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F
from PIL import Image

from regionclip_cli.modeling.clip import load_clip
from regionclip_cli.modeling.freezing import freeze_batchnorm, freeze_stages
from regionclip_cli.modeling.region_encoder import RegionEncoder
from regionclip_cli.modeling.text import embed_names, ensemble_templates
from regionclip_cli.synthetic.categories import WORLD_CATEGORIES
from regionclip_cli.synthetic.evaluation import EvaluationConfig, evaluate_world_clip
from regionclip_cli.synthetic.teacher import images_to_tensor
from regionclip_cli.synthetic.world import WorldConfig, world_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=250)
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW lr, x0.1 after two thirds of the run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="square input size, in training and evaluation")
    parser.add_argument("--images", type=int, default=2000, help="training images of world seed 11")
    parser.add_argument("--fresh-worlds", type=int, nargs="+", default=[5, 6, 8])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    sampler = random.Random(args.seed)

    clip = load_clip("world-tiny")
    classes = F.normalize(embed_names(clip, [c.name for c in WORLD_CATEGORIES], ensemble_templates()).float(), dim=-1)
    visual = clip.model.visual
    freeze_batchnorm(visual)
    freeze_stages(visual, 2)
    visual.train()
    encoder = RegionEncoder(visual)
    optimizer = torch.optim.AdamW([p for p in visual.parameters() if p.requires_grad], lr=args.lr, weight_decay=1e-4)
    mean, std = torch.tensor(clip.mean).view(1, 3, 1, 1), torch.tensor(clip.std).view(1, 3, 1, 1)
    world = [world_image(WorldConfig(seed=11), i) for i in range(args.images)]

    start = time.perf_counter()
    for iteration in range(args.iterations):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * (0.1 if iteration >= 2 * args.iterations // 3 else 1.0)
        batch = sampler.sample(world, args.batch_size)
        images = images_to_tensor([it.image.resize((args.size, args.size), Image.Resampling.BILINEAR)
                                   for it in batch], mean, std)
        boxes = [torch.tensor([o.box for o in it.objects]) * (args.size / it.image.width) for it in batch]
        truth = torch.tensor([o.category_id - 1 for it in batch for o in it.objects])
        regions = F.normalize(encoder(images, boxes).float(), dim=-1)
        loss = F.cross_entropy(regions @ classes.T / 0.01, truth)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if iteration % 50 == 0 or iteration == args.iterations - 1:
            print(f"iteration {iteration + 1}/{args.iterations}: loss {loss.item():.3f}", flush=True)
    print(f"trained in {time.perf_counter() - start:.0f} s")

    visual.eval()
    columns = ("all", "base", "novel")
    per_world = [evaluate_world_clip(clip, EvaluationConfig(image_count=1, region_seed=seed, input_size=args.size))
                 for seed in args.fresh_worlds]
    means = {c: statistics.mean(100 * f["region"][c]["top1"] for f in per_world) for c in columns}
    print(f"\nsupervised ceiling ({args.iterations} iterations, lr {args.lr:g}, {args.size} px): region top-1 (%) "
          f"on fresh worlds {args.fresh_worlds}, mean; chance 5.0")
    print("| all | base | novel |\n|---:|---:|---:|")
    print("| " + " | ".join(f"{means[c]:.1f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
