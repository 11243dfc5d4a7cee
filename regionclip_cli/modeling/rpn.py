"""A class-agnostic region proposal network you can train on your own boxes.

Users of the original got near-zero AP on their own data until they trained an RPN for their
domain, and the original offers no way to do that. This one is torchvision's pieces
(`AnchorGenerator`, `RPNHead`, `RegionProposalNetwork`'s matcher, sampler, box coder and
`filter_proposals`) on a backbone of the user's choice — the frozen CLIP trunk (stem → layer3,
stride 16, as detectron2's C4 RPN) by default, or a torchvision ResNet-FPN — with detectron2's C4
settings as defaults (`RPNConfig`). Where torchvision's defaults differ from detectron2's, ours
follow detectron2:

- anchors are not rounded to whole pixels (torchvision rounds them);
- the box loss is L1 (smooth-L1 β = 0, torchvision uses β = 1/9), and both losses are normalised
  by `batch_size_per_image × images` as detectron2 does (torchvision divides by the number of
  anchors actually sampled, which is the same unless an image has too few anchors);
- top-k before/after NMS 12,000/2,000 in training and 6,000/1,000 at test.

Training can seed each image's anchor sampling (`seeds`, one per image): torchvision's sampler
draws from the global generator, image after image, so without them an image's draw depends on the
images before it in the local batch — that is, on how a global batch is split over processes.

`RegionProposalNetwork.forward` would drop the objectness scores and demands targets whenever the
module is in training mode, so `ProposalNetwork.forward` composes the pieces itself: a dict of
losses in training, `[{"boxes", "scores"}]` (scores are sigmoid probabilities) in eval mode. A
frozen RPN inside a detector stays in eval mode under `no_grad` (see `freeze`), so it keeps the
test-time top-k while the detector trains, as the original runs its offline RPN.

Images are given raw (RGB in [0, 1], already resized), one tensor per image; the network
normalises them with its own mean/std and pads the batch, so a detector can feed the same images
to an RPN and a CLIP that were trained with different normalisations.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers

from regionclip_cli.core.errors import RegionclipError

RPN_KIND = "rpn"
BACKBONES = ("clip", "resnet18-fpn", "resnet50-fpn")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class RPNConfig:
    """Anchors, matching, sampling and NMS of the RPN; defaults are detectron2's C4 RPN.

    `backbone`: "clip" (the frozen trunk of `model`, stride 16, one feature level) or a
    torchvision ResNet-FPN (five levels, one anchor size per level, trained with the head).
    """

    backbone: Literal["clip", "resnet18-fpn", "resnet50-fpn"] = "clip"
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    fg_iou_threshold: float = 0.7
    bg_iou_threshold: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    nms_threshold: float = 0.7
    pre_nms_top_n_train: int = 12000
    post_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 6000
    post_nms_top_n_test: int = 1000
    smooth_l1_beta: float = 0.0

    def __post_init__(self) -> None:
        if not self.anchor_sizes or min(self.anchor_sizes) <= 0:
            raise ValueError("rpn.anchor_sizes must be positive pixel sizes")
        if not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            raise ValueError("rpn.aspect_ratios must be positive")
        if self.backbone != "clip" and len(self.anchor_sizes) != 5:
            raise ValueError("an FPN backbone has 5 levels: give rpn.anchor_sizes 5 sizes, one per level")
        if not 0 <= self.bg_iou_threshold <= self.fg_iou_threshold <= 1:
            raise ValueError("need 0 <= rpn.bg_iou_threshold <= rpn.fg_iou_threshold <= 1")
        if not 0 < self.positive_fraction <= 1 or self.batch_size_per_image < 1:
            raise ValueError("need 0 < rpn.positive_fraction <= 1 and rpn.batch_size_per_image >= 1")
        if min(self.pre_nms_top_n_train, self.post_nms_top_n_train, self.pre_nms_top_n_test,
               self.post_nms_top_n_test) < 1:
            raise ValueError("rpn top-k values must be at least 1")

    def with_test_limits(self, nms_threshold: float, post_nms_top_n: int) -> RPNConfig:
        """The same RPN with other test-time NMS and proposal count (zero-shot: 0.9 / 1000)."""
        return dataclasses.replace(self, nms_threshold=nms_threshold, post_nms_top_n_test=post_nms_top_n)


class _UnroundedAnchorGenerator(AnchorGenerator):
    """detectron2's cell anchors: torchvision rounds them to whole pixels, detectron2 does not."""

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")):
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2


class ClipTrunk(nn.Module):
    """A CLIP ResNet's stem → layer3 (stride 16), the C4 RPN's backbone: `{"res4": map}`."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        if not all(hasattr(visual, part) for part in ("stem", "layer1", "layer2", "layer3")):
            raise TypeError(f"ClipTrunk needs an open_clip ModifiedResNet, got {type(visual).__name__}")
        self.visual = visual
        for unused in ("layer4", "attnpool"):  # the RPN never reads them; not stored in its checkpoint
            if hasattr(visual, unused):
                delattr(visual, unused)
        self.out_channels = int(visual.layer3[-1].conv3.out_channels)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        visual = self.visual
        return OrderedDict(res4=visual.layer3(visual.layer2(visual.layer1(visual.stem(images)))))


def normalise_and_pad(images: Sequence[torch.Tensor], mean: Sequence[float], std: Sequence[float]
                      ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Raw [3, h, w] images → a normalised batch zero-padded at the bottom/right, and each (h, w).

    Normalising before padding makes the padding the mean colour, as detectron2 does; no size
    divisibility (the original's CLIP backbone uses none).
    """
    from regionclip_cli.data.images import pad_batch

    first = images[0]
    mean_t = torch.tensor(mean, dtype=first.dtype, device=first.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=first.dtype, device=first.device).view(3, 1, 1)
    batch = pad_batch([(image - mean_t) / std_t for image in images], size_divisibility=0)
    return batch, [(int(image.shape[-2]), int(image.shape[-1])) for image in images]


class ProposalNetwork(nn.Module):
    """Backbone + RPN head: losses in training, `[{"boxes", "scores"}]` (input pixels) in eval.

    `backbone_trainable=False` (the CLIP trunk) keeps the backbone in eval mode and out of autograd
    whatever mode the network is in, so its batch-norm statistics never move.
    """

    def __init__(self, backbone: nn.Module, config: RPNConfig, *, mean: Sequence[float],
                 std: Sequence[float], backbone_trainable: bool):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.backbone_trainable = backbone_trainable
        if not backbone_trainable:
            backbone.requires_grad_(False)
        if config.backbone == "clip":
            sizes, ratios = (tuple(config.anchor_sizes),), (tuple(config.aspect_ratios),)
        else:
            sizes = tuple((s,) for s in config.anchor_sizes)
            ratios = (tuple(config.aspect_ratios),) * len(sizes)
        anchors = _UnroundedAnchorGenerator(sizes, ratios)
        head = RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0])
        self.rpn = RegionProposalNetwork(
            anchors, head, config.fg_iou_threshold, config.bg_iou_threshold, config.batch_size_per_image,
            config.positive_fraction,
            dict(training=config.pre_nms_top_n_train, testing=config.pre_nms_top_n_test),
            dict(training=config.post_nms_top_n_train, testing=config.post_nms_top_n_test),
            config.nms_threshold, score_thresh=0.0)

    def train(self, mode: bool = True) -> ProposalNetwork:
        super().train(mode)
        if not self.backbone_trainable:
            self.backbone.eval()
        return self

    def set_test_limits(self, nms_threshold: float, post_nms_top_n: int) -> None:
        """Change test-time NMS and proposal count in place (the checkpoint's training is unchanged)."""
        self.config = self.config.with_test_limits(nms_threshold, post_nms_top_n)
        self.rpn.nms_thresh = nms_threshold
        self.rpn._post_nms_top_n["testing"] = post_nms_top_n

    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[torch.Tensor] | None = None,
                seeds: Sequence[int] | None = None):
        """`images`: raw RGB [3, h, w] in [0, 1]; `targets`: [Ni, 4] x1y1x2y2 boxes (training only;
        an image without boxes needs `zeros((0, 4))`); `seeds` (training, optional): one per image,
        each image's anchors sampled under its own seed (else from the global generator)."""
        batch, sizes = normalise_and_pad(images, self.mean, self.std)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.backbone_trainable):
            features = list(self.backbone(batch).values())
        objectness, deltas = self.rpn.head(features)
        # Boxes in float32 whatever the autocast: anchors take the features' dtype, and a bf16
        # coordinate near 1,000 px is off by up to 4 px.
        anchors = self.rpn.anchor_generator(ImageList(batch, sizes), [f.float() for f in features])
        per_level = [o[0].numel() for o in objectness]  # [A, H, W] per image and level
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        objectness, deltas = objectness.float(), deltas.float()
        if self.training:
            if targets is None:
                raise ValueError("ProposalNetwork in training mode needs targets (boxes per image)")
            return self._losses(anchors, objectness, deltas, targets, seeds)
        proposals = self.rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, scores = self.rpn.filter_proposals(proposals, objectness, sizes, per_level)
        return [{"boxes": b, "scores": s} for b, s in zip(boxes, scores)]

    def _losses(self, anchors, objectness, deltas, targets, seeds) -> dict[str, torch.Tensor]:
        """detectron2's RPN losses: BCE on the sampled anchors and L1 (β = 0) on the positive
        ones, both summed and divided by `batch_size_per_image × images`.

        The divisor does not depend on how many anchors an image actually samples (fewer than
        `batch_size_per_image` when it has too few negatives): the processes' losses, averaged
        with their image counts as weights, are exactly the loss of the whole batch on one."""
        rpn = self.rpn
        boxes = [{"boxes": t.to(device=deltas.device, dtype=torch.float32).reshape(-1, 4)} for t in targets]
        labels, matched = rpn.assign_targets_to_anchors(anchors, boxes)
        regression_targets = torch.cat(rpn.box_coder.encode(matched, anchors))
        positive, negative = self._sample(labels, seeds)
        positive = torch.where(torch.cat(positive))[0]
        sampled = torch.cat([positive, torch.where(torch.cat(negative))[0]])
        labels = torch.cat(labels)
        normaliser = self.config.batch_size_per_image * len(targets)
        objectness = objectness.flatten()
        loss_objectness = F.binary_cross_entropy_with_logits(
            objectness[sampled], labels[sampled], reduction="sum") / normaliser
        beta = self.config.smooth_l1_beta
        if beta < 1e-5:
            box = F.l1_loss(deltas[positive], regression_targets[positive], reduction="sum")
        else:
            box = F.smooth_l1_loss(deltas[positive], regression_targets[positive], beta=beta, reduction="sum")
        return {"loss_objectness": loss_objectness, "loss_rpn_box_reg": box / normaliser}

    def _sample(self, labels: list[torch.Tensor], seeds: Sequence[int] | None):
        """torchvision's balanced sampler; with `seeds`, run on each image alone under its seed
        (global generator state restored after), so an image's draw ignores the other images.
        The draw is made on the CPU: CUDA's generator permutes differently, and a run on a GPU
        should sample the anchors a CPU run samples."""
        sampler = self.rpn.fg_bg_sampler
        if seeds is None:
            return sampler(labels)
        if len(seeds) != len(labels):
            raise ValueError(f"{len(seeds)} seeds for {len(labels)} images")
        positive, negative = [], []
        for image_labels, seed in zip(labels, seeds):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                (image_positive,), (image_negative,) = sampler([image_labels.cpu()])
            positive.append(image_positive.to(image_labels.device))
            negative.append(image_negative.to(image_labels.device))
        return positive, negative


def freeze(network: ProposalNetwork) -> ProposalNetwork:
    """An offline RPN: no gradients and eval mode. A parent's `.train()` would switch it back to
    training mode (targets required, training top-k), so the parent's own `train` puts it back
    in eval mode, as `OpenVocabularyDetector.train` does."""
    network.requires_grad_(False)
    return network.eval()


# --- building and checkpoints ------------------------------------------------------------------

def _clip_trunk(model_name: str) -> tuple[ClipTrunk, tuple, tuple]:
    from regionclip_cli.modeling.clip import load_clip

    clip = load_clip(model_name, random_init=True)
    return ClipTrunk(clip.model.visual), clip.mean, clip.std


def _fpn(name: str) -> nn.Module:
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    return resnet_fpn_backbone(backbone_name=name.split("-")[0], weights=None, trainable_layers=5)


def build_proposal_network(config: RPNConfig, *, clip_visual: nn.Module | None = None,
                           mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                           model_name: str | None = None) -> ProposalNetwork:
    """A fresh RPN head on a backbone: the given CLIP image tower's trunk (copied, frozen), the
    trunk of `model_name` (random weights, to load a checkpoint into) or a torchvision FPN."""
    import copy

    if config.backbone == "clip":
        if clip_visual is not None:
            trunk = ClipTrunk(copy.deepcopy(clip_visual))
        elif model_name is not None:
            trunk, mean, std = _clip_trunk(model_name)
        else:
            raise ValueError("a CLIP-trunk RPN needs clip_visual or model_name")
        return ProposalNetwork(trunk, config, mean=mean, std=std, backbone_trainable=False)
    return ProposalNetwork(_fpn(config.backbone), config, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                           backbone_trainable=True)


def rpn_checkpoint(network: ProposalNetwork, model_name: str, metadata: dict[str, Any]):
    """Our checkpoint format, self-contained: the backbone travels with the head, as the
    original's offline RPN has its own backbone."""
    from regionclip_cli.engine.recipe import to_plain
    from regionclip_cli.modeling.checkpoints import Checkpoint

    return Checkpoint(kind=RPN_KIND, model=model_name, state_dict=network.state_dict(),
                      metadata={**metadata, "rpn": to_plain(network.config), "mean": list(network.mean),
                                "std": list(network.std)})


def read_rpn_checkpoint(path: str | os.PathLike, option: str = "--rpn"):
    """The file as one of our RPN checkpoints, or one line saying what it is instead."""
    from regionclip_cli.modeling.checkpoints import load_checkpoint

    checkpoint = load_checkpoint(path)
    if checkpoint.kind != RPN_KIND:
        raise RegionclipError(f"{option} {path}: a regionclip '{checkpoint.kind}' checkpoint, not an RPN "
                              f"(train one with `regionclip rpn RECIPE.yaml`)")
    return checkpoint


def load_proposal_network(path: str | os.PathLike, device: str | torch.device = "cpu",
                          option: str = "--rpn") -> ProposalNetwork:
    """An RPN checkpoint written by `regionclip rpn`, frozen and in eval mode on `device`."""
    from regionclip_cli.engine.recipe import RecipeError, build

    checkpoint = read_rpn_checkpoint(path, option)
    try:
        config = build(RPNConfig, checkpoint.metadata.get("rpn"), "rpn", str(path))
    except RecipeError as error:
        raise RegionclipError(f"{option} {path}: its RPN settings do not load ({error})") from None
    if config.backbone == "clip":
        network = build_proposal_network(config, model_name=checkpoint.model)
    else:
        network = build_proposal_network(config)
    network.mean = tuple(checkpoint.metadata.get("mean", network.mean))
    network.std = tuple(checkpoint.metadata.get("std", network.std))
    _load_strict(network, checkpoint.state_dict, f"{option} {path}", checkpoint.model)
    return freeze(network.to(device))


def _load_strict(network: nn.Module, state: dict[str, torch.Tensor], origin: str, backbone: str) -> None:
    expected = network.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        key = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise RegionclipError(f"{origin}: the weights do not fit an RPN on the {backbone} backbone it "
                              f"names ({key}; {len(missing)} missing, {len(unexpected)} unexpected)")
    for key, value in expected.items():
        if key in state and state[key].shape != value.shape:
            raise RegionclipError(f"{origin}: the weights do not fit an RPN on the {backbone} backbone it "
                                  f"names ({key} is {list(state[key].shape)} in the file, "
                                  f"{list(value.shape)} in {backbone})")
    network.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=False)


# --- recall --------------------------------------------------------------------------------------

def proposal_recall(proposals: Sequence[torch.Tensor], ground_truth: Sequence[torch.Tensor],
                    limits: Sequence[int] = (100, 300, 1000),
                    iou_thresholds: Sequence[float] = tuple(0.5 + 0.05 * i for i in range(10))
                    ) -> dict[int, float]:
    """Average recall AR@k (COCO's proposal metric): recall of the ground-truth boxes by the best
    `k` proposals of their image, averaged over IoU 0.5:0.95; proposals sorted by score.

    Each box counts as recalled at threshold t when some top-k proposal overlaps it by ≥ t
    (no one-to-one matching, as detectron2's `find_top_rpn_proposals` recall does).
    """
    from torchvision.ops import box_iou

    thresholds = torch.tensor(list(iou_thresholds))
    hits = {k: torch.zeros(len(thresholds)) for k in limits}
    total = 0
    for boxes, gt in zip(proposals, ground_truth):
        total += len(gt)
        if len(gt) == 0 or len(boxes) == 0:
            continue
        iou = box_iou(gt.float(), boxes.float())  # [G, P]
        for k in limits:
            best = iou[:, :k].max(dim=1).values  # [G]
            hits[k] += (best[:, None] >= thresholds[None, :] - 1e-9).sum(dim=0).float()
    if total == 0:
        return {k: math.nan for k in limits}
    return {k: float(hits[k].mean() / total * 100.0) for k in limits}
