"""Open-vocabulary detector finetuning as an engine task (the engine's second, after pretrain).

Per iteration, for this process's images of the global batch (`data.TrainingBatches`): the
frozen offline RPN proposes (eval mode, no gradients), the CLIP box head embeds sampled regions,
the predictor scores them against the *training* vocabulary's frozen text embeddings (base
classes), and the detector returns its two losses. Every term is this process's share of the
global mean, so DDP's gradient average is the global gradient.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import torch

from regionclip_cli.data.captions import rank_slice
from regionclip_cli.data.vocab import Vocabulary
from regionclip_cli.engine.recipe import to_plain
from regionclip_cli.engine.task import Runtime
from regionclip_cli.modeling.clip import LoadedClip, load_clip
from regionclip_cli.modeling.detector.model import OpenVocabularyDetector
from regionclip_cli.modeling.freezing import clip_state_template, freeze_batchnorm, freeze_stages
from regionclip_cli.modeling.rpn import load_proposal_network
from regionclip_cli.stages.finetune.artefact import save_detector
from regionclip_cli.stages.finetune.data import AnnotatedSet, TrainingBatches
from regionclip_cli.stages.finetune.recipe import FinetuneConfig


def vocabulary_embeddings(clip: LoadedClip, vocabulary: Vocabulary, templates: str, *,
                          progress: bool = False) -> torch.Tensor:
    """[K, D] prompt-ensemble text embeddings of the vocabulary's names by `clip`'s text tower."""
    from regionclip_cli.modeling.text import embed_names, resolve_templates

    return embed_names(clip, list(vocabulary.names), resolve_templates(templates), progress=progress)


class FinetuneTask:
    description = "finetune"
    artefact = "detector.pt"
    loss_weights = {"loss_cls": 1.0, "loss_box_reg": 1.0}

    def __init__(self, recipe: FinetuneConfig, runtime: Runtime, training: AnnotatedSet,
                 log: Callable[[str], None] = print):
        self.recipe, self.runtime = recipe, runtime
        device = runtime.device
        head = recipe.box_head
        self.clip = load_clip(head.model, pretrained=head.pretrained, weights=head.weights, device=device)
        self.vocabulary = training.vocabulary
        embeddings = vocabulary_embeddings(self.clip, self.vocabulary, recipe.templates)
        self.clip_template = clip_state_template(self.clip)
        visual = copy.deepcopy(self.clip.model.visual).requires_grad_(True)
        freeze_batchnorm(visual)
        freeze_stages(visual, head.freeze_at)
        rpn = load_proposal_network(recipe.rpn, device, option="rpn")
        with torch.random.fork_rng(devices=[]):  # the box regression's initial weights: from the seed
            torch.manual_seed(recipe.train.seed)
            self.detector = OpenVocabularyDetector(rpn, visual, embeddings, recipe.detector, mean=self.clip.mean,
                                                   std=self.clip.std, postprocess=recipe.test)
        self.detector.to(device).train()
        self.model = runtime.distribute(self.detector)
        dist = runtime.dist
        self.batches = TrainingBatches(training, recipe.data, batch_size=recipe.train.batch_size,
                                       seed=recipe.train.seed,
                                       positions=rank_slice(recipe.train.batch_size, dist.rank, dist.world_size))

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.detector.parameters() if p.requires_grad]

    def batch(self, iteration: int):
        return self.batches(iteration)

    def step(self, batch) -> dict[str, torch.Tensor]:
        device = self.runtime.device
        images = [image.to(device) for image in batch.images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in batch.targets]
        # One generator per image, seeded by its global-batch position: the regions drawn for an
        # image are the same on one process or many (one generator for the batch would draw the
        # second image's regions after the first's on one process, from a fresh seed on two).
        # Exact for batches of equal image sizes: one process pads each image to the largest.
        generators = [torch.Generator().manual_seed(seed) for seed in batch.image_seeds]
        with self.runtime.autocast():
            losses = self.model(images, targets, generator=generators)
        # Each term is a mean over this process's sampled regions; every image samples the same
        # number (regions_per_image, fewer only without enough proposals), so images weigh it.
        return {name: self.runtime.dist.global_mean(value.float(), len(images)) for name, value in losses.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"visual.{k}": v for k, v in self.detector.encoder.visual.state_dict().items()},
                **{f"bbox_pred.{k}": v for k, v in self.detector.predictor.bbox_pred.state_dict().items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for prefix, module in (("visual.", self.detector.encoder.visual),
                               ("bbox_pred.", self.detector.predictor.bbox_pred)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def metadata(self) -> dict[str, Any]:
        return {"model": self.clip.name, "recipe": to_plain(self.recipe), "clip_identity": self.clip.identity,
                "train_vocabulary": list(self.vocabulary.names)}

    def export(self, path: Path, iterations: int) -> None:
        save_detector(path, self.detector, clip=self.clip, clip_template=self.clip_template, rpn_file=self.recipe.rpn,
                      metadata={**self.metadata(), "iterations": iterations, "trained_by": "regionclip finetune"})
