"""RPN training as an engine task: this process's images, their base boxes, two losses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from regionclip_cli.data.captions import rank_slice
from regionclip_cli.engine.recipe import to_plain
from regionclip_cli.engine.task import Runtime
from regionclip_cli.modeling.checkpoints import save_checkpoint
from regionclip_cli.modeling.rpn import build_proposal_network, rpn_checkpoint
from regionclip_cli.stages.finetune.data import AnnotatedSet, TrainingBatches
from regionclip_cli.stages.rpn.recipe import RPNTrainingConfig


class RPNTask:
    description = "rpn"
    artefact = "rpn.pt"
    loss_weights = {"loss_objectness": 1.0, "loss_rpn_box_reg": 1.0}

    def __init__(self, recipe: RPNTrainingConfig, runtime: Runtime, training: AnnotatedSet):
        self.recipe, self.runtime = recipe, runtime
        self.categories = list(training.vocabulary.names)
        with torch.random.fork_rng(devices=[]):  # the head's initial weights: from the seed
            torch.manual_seed(recipe.train.seed)
            self._build(recipe, runtime)
        self.network.to(runtime.device).train()
        self.model = runtime.distribute(self.network)
        dist = runtime.dist
        self.batches = TrainingBatches(training, recipe.data, batch_size=recipe.train.batch_size,
                                       seed=recipe.train.seed,
                                       positions=rank_slice(recipe.train.batch_size, dist.rank, dist.world_size))

    def _build(self, recipe: RPNTrainingConfig, runtime: Runtime) -> None:
        if recipe.rpn.backbone == "clip":
            from regionclip_cli.modeling.clip import load_clip

            trunk = recipe.trunk
            clip = load_clip(trunk.model, pretrained=trunk.pretrained, weights=trunk.weights, device=runtime.device)
            self.model_name, self.source = clip.name, clip.identity
            self.network = build_proposal_network(recipe.rpn, clip_visual=clip.model.visual, mean=clip.mean,
                                                  std=clip.std)
            del clip
        else:
            self.model_name, self.source = recipe.rpn.backbone, "random-init"
            self.network = build_proposal_network(recipe.rpn)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.network.parameters() if p.requires_grad]

    def batch(self, iteration: int):
        return self.batches(iteration)

    def step(self, batch) -> dict[str, torch.Tensor]:
        device = self.runtime.device
        images = [image.to(device) for image in batch.images]
        boxes = [t["boxes"].to(device) for t in batch.targets]
        # Each image's anchors are sampled under its own seed, by global-batch position and
        # iteration: the same draws on one process or many, and after a resume. (One seed per
        # process would draw the second image's anchors after the first's on one process, from
        # a fresh seed on two.)
        with self.runtime.autocast():
            losses = self.model(images, boxes, seeds=batch.image_seeds)
        # Each term is a sum over this process's sampled anchors divided by batch_size_per_image
        # per image (not by the anchors sampled), so weighting by images gives the global figure.
        # Not exact when one batch mixes image sizes (several data.min_sizes, COCO's aspect
        # ratios): a smaller image is padded to the batch's largest, and the anchors over its
        # padding (the anchor grid covers the padded map) join its negatives, so its draws differ
        # from the same image alone on a process (measured: objectness ~1e-3 relative).
        return {name: self.runtime.dist.global_mean(value.float(), len(images)) for name, value in losses.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.network.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.network.load_state_dict(state)

    def metadata(self) -> dict[str, Any]:
        return {"model": self.model_name, "recipe": to_plain(self.recipe), "backbone_source": self.source,
                "trained_on": {"annotations": str(self.recipe.data.train.annotations),
                               "splits": self.recipe.data.train_splits, "categories": self.categories}}

    def export(self, path: Path, iterations: int) -> None:
        save_checkpoint(path, rpn_checkpoint(self.network, self.model_name,
                                             {**self.metadata(), "iterations": iterations,
                                              "trained_by": "regionclip rpn"}))
