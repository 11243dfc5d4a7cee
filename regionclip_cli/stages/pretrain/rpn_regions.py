"""Regions from a frozen RPN, proposed on each augmented training image inside the step.

The paper pretrains on regions from an RPN trained on another dataset's base-category boxes
(LVIS), not on the captioned images: NMS 0.5, the 300 best proposals kept, 100 of them sampled
at random per image and step. The RPN sees the image exactly as the teacher and the student
do (resized, flipped), un-normalised back to RGB in [0, 1], one image at a time without the
batch's padding; the sample is drawn from the image's own generator (seed, iteration, position in
the global batch), so any number of processes proposes what one would.
"""

from __future__ import annotations

from typing import Sequence

import torch

from regionclip_cli.data.captions import sample_generator
from regionclip_cli.modeling.rpn import load_proposal_network
from regionclip_cli.stages.pretrain.recipe import ProposalsConfig


class RPNRegions:
    def __init__(self, config: ProposalsConfig, mean: Sequence[float], std: Sequence[float], seed: int,
                 device: torch.device):
        self.network = load_proposal_network(config.rpn, device, option="proposals.rpn")
        self.network.set_test_limits(config.rpn_nms_threshold, config.rpn_candidates)
        self.count = config.regions_per_image
        self.seed = seed
        self.mean = torch.tensor(mean, device=device).view(3, 1, 1)
        self.std = torch.tensor(std, device=device).view(3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, whole: Sequence[torch.Tensor], iteration: int,
                 positions: Sequence[int]) -> list[torch.Tensor]:
        """Per image [R, 4] boxes in input pixels; `images` is the normalised padded batch and
        `whole` each image's [1, 4] whole-image box (its size before padding)."""
        raw = [(image[:, :int(box[0, 3]), :int(box[0, 2])].float() * self.std + self.mean).clamp(0, 1)
               for image, box in zip(images, whole)]
        regions = []
        for image, position in zip(raw, positions):
            boxes = self.network([image])[0]["boxes"]
            if len(boxes) > self.count:
                generator = sample_generator(self.seed, iteration, position, stream="rpn")
                boxes = boxes[torch.randperm(len(boxes), generator=generator)[:self.count].to(boxes.device)]
            regions.append(boxes)
        return regions
