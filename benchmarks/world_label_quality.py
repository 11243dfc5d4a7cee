"""How right the teacher's pseudo labels are on the synthetic world's ground-truth boxes.

The student can only learn what its labels say: this measures, on boxes of a world it is
pretrained on, how often the teacher's region label names the box's true shape, three ways:
the best of the 20 class names; the best concept of the whole pool (the original's rule); and
the best concept among those the image's own captions name (`pseudo_labels.candidates:
captions`). A label counts as right when the concept is the class name or one of its synonyms
(`synthetic.categories`). Also: how many classes have the right class as their most frequent label
(systematic confusions that no amount of imitation undoes).

With `--rpn CKPT`, also the regions pretraining really labels: the RPN's best proposals (NMS 0.5)
by rank, how many cover a shape (IoU >= 0.5 with a ground-truth box) and how often the
caption-restricted label of those names it. Every other proposal is background or a fragment,
labelled with some shape of the captions all the same: the noise `proposals.regions_per_image`
trades against coverage.

    python benchmarks/world_label_quality.py --concepts WORK/world/concepts/concept_embeddings.pt \
        [--rpn WORK/runs/world-rpn/rpn.pt]
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_iou

from regionclip_cli.data.captions import CaptionedImage
from regionclip_cli.modeling.clip import load_clip
from regionclip_cli.modeling.region_encoder import RegionEncoder
from regionclip_cli.modeling.rpn import load_proposal_network
from regionclip_cli.modeling.text import embed_names, ensemble_templates, load_text_embeddings
from regionclip_cli.stages.concepts.mentions import CaptionMentions, candidate_mask, pool_spacy_model
from regionclip_cli.stages.pseudolabel.labeler import assign_pseudo_labels
from regionclip_cli.synthetic.categories import WORLD_CATEGORIES
from regionclip_cli.synthetic.teacher import images_to_tensor
from regionclip_cli.synthetic.world import WorldConfig, world_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concepts", type=Path, required=True, help="concept_embeddings.pt of the world")
    parser.add_argument("--weights", type=Path, help="a world CLIP checkpoint [default: world-tiny]")
    parser.add_argument("--size", type=int, default=128, help="input size the teacher sees")
    parser.add_argument("--seed", type=int, default=11, help="world seed (the claim's pretraining world)")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rpn", type=Path, help="also the labels of this RPN's proposals, by rank")
    parser.add_argument("--proposals", type=int, default=32, help="RPN proposals per image after NMS 0.5")
    args = parser.parse_args()

    clip = load_clip("world-tiny" if args.weights is None else None, weights=args.weights)
    names = [c.name for c in WORLD_CATEGORIES]
    classes = embed_names(clip, names, ensemble_templates())
    pool = load_text_embeddings(args.concepts)
    concepts = torch.nn.functional.normalize(pool.embeddings.float(), dim=-1)
    synonym_class = {s: c.id - 1 for c in WORLD_CATEGORIES for s in c.surface_forms}
    concept_class = torch.tensor([synonym_class.get(n, -1) for n in pool.names])
    encoder = RegionEncoder(clip.model.visual)
    mean, std = torch.tensor(clip.mean).view(1, 3, 1, 1), torch.tensor(clip.std).view(1, 3, 1, 1)
    items = [world_image(WorldConfig(seed=args.seed), i) for i in range(args.images)]
    mentions = CaptionMentions([CaptionedImage(Path(str(i)), tuple(it.captions)) for i, it in enumerate(items)],
                               pool.names, pool_spacy_model(args.concepts))
    by_class, by_pool, by_captions, truth = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(items), 25):
            chunk = items[start:start + 25]
            batch = images_to_tensor([it.image.resize((args.size, args.size), Image.Resampling.BILINEAR)
                                      for it in chunk], mean, std)
            boxes = [torch.tensor([o.box for o in it.objects]) * (args.size / it.image.width) for it in chunk]
            regions = torch.nn.functional.normalize(encoder(batch, boxes).float(), dim=-1)
            by_class.append((regions @ classes.T).argmax(1))
            logits = regions @ concepts.T
            by_pool.append(logits.argmax(1))
            allowed = candidate_mask(mentions.for_images(range(start, start + len(chunk))),
                                     [len(b) for b in boxes], len(pool.names), torch.device("cpu"))
            by_captions.append(logits.masked_fill(~allowed, float("-inf")).argmax(1))
            truth += [o.category_id - 1 for it in chunk for o in it.objects]
    report_box_labels(args, names, torch.cat(by_class), torch.cat(by_pool), torch.cat(by_captions),
                      torch.tensor(truth), concept_class)
    if args.rpn is not None:
        report_proposal_labels(args, clip, encoder, concepts, concept_class, mentions, items)


def report_box_labels(args: argparse.Namespace, names: list[str], by_class: torch.Tensor, by_pool: torch.Tensor,
                      by_captions: torch.Tensor, truth: torch.Tensor, concept_class: torch.Tensor) -> None:
    novel = torch.tensor([WORLD_CATEGORIES[t].split == "novel" for t in truth.tolist()])
    print(f"{len(truth)} ground-truth boxes of {args.images} images of world seed {args.seed}, teacher at "
          f"{args.size} px; % right (chance 5 %)")
    print("| label source | all | base | novel |\n|---|---:|---:|---:|")
    rows = {"best of the 20 class names": by_class == truth,
            "best concept of the whole pool": concept_class[by_pool] == truth,
            "best concept its captions name": concept_class[by_captions] == truth}
    for name, right in rows.items():
        print(f"| {name} | {100 * right.float().mean():.1f} | {100 * right[~novel].float().mean():.1f} | "
              f"{100 * right[novel].float().mean():.1f} |")
    modes = [collections.Counter(by_class[truth == k].tolist()).most_common(1)[0] for k in range(len(names))]
    print(f"\nclasses whose most frequent label (of the 20 names) is right: "
          f"{sum(m[0] == k for k, m in enumerate(modes))} of {len(names)}")
    for k, (label, count) in enumerate(modes):
        if label != k:
            print(f"  {names[k]} -> {names[label]} ({100 * count / int((truth == k).sum()):.0f} %)")


@torch.no_grad()
def report_proposal_labels(args: argparse.Namespace, clip, encoder: RegionEncoder, concepts: torch.Tensor,
                           concept_class: torch.Tensor, mentions: CaptionMentions, items: list) -> None:
    """By proposal rank: the share that covers a shape, and the caption-restricted label's accuracy there."""
    network = load_proposal_network(args.rpn)
    network.set_test_limits(0.5, args.proposals)
    mean, std = torch.tensor(clip.mean).view(1, 3, 1, 1), torch.tensor(clip.std).view(1, 3, 1, 1)
    covers, right, ranks = [], [], []
    for index, item in enumerate(items):
        image = item.image.resize((args.size, args.size), Image.Resampling.BILINEAR)
        raw = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        boxes = network([raw])[0]["boxes"]
        if len(boxes) == 0:
            continue
        scale = args.size / item.image.width
        truth_boxes = torch.tensor([o.box for o in item.objects]) * scale
        overlap, match = box_iou(boxes, truth_boxes).max(dim=1)
        regions = torch.nn.functional.normalize(encoder(images_to_tensor([image], mean, std), [boxes]).float(), dim=-1)
        allowed = candidate_mask(mentions.for_images([index]), [len(boxes)], len(concepts), torch.device("cpu"))
        labels = assign_pseudo_labels(regions, concepts, candidates=allowed).labels
        categories = torch.tensor([o.category_id - 1 for o in item.objects])
        covers.append(overlap >= 0.5)
        right.append(concept_class[labels] == categories[match])
        ranks.append(torch.arange(len(boxes)))
    covers, right, ranks = torch.cat(covers), torch.cat(right), torch.cat(ranks)
    print(f"\nRPN proposals ({args.rpn}, NMS 0.5, best {args.proposals}) on the same images, by rank: the share "
          "covering a shape (IoU >= 0.5), and the caption-restricted label right on those")
    print("| ranks | proposals | cover a shape (%) | label right on those (%) |\n|---|---:|---:|---:|")
    edges = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b < args.proposals] + [args.proposals]
    for low, high in zip([0, *edges[:-1]], edges):
        mask = (ranks >= low) & (ranks < high)
        if mask.any():
            hit = covers & mask
            ranks_label = f"{high}" if high == low + 1 else f"{low + 1}-{high}"
            print(f"| {ranks_label} | {int(mask.sum())} | {100 * hit.sum() / mask.sum():.1f} | "
                  f"{100 * (right & hit).sum() / hit.sum().clamp(min=1):.1f} |")


if __name__ == "__main__":
    main()
