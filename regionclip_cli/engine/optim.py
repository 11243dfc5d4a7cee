"""The optimiser and its lr schedule, built from the `optimizer` recipe section alone."""

from __future__ import annotations

import torch

from regionclip_cli.engine.config import OptimizerConfig


def lr_at(iteration: int, config: OptimizerConfig) -> float:
    """detectron2's WarmupMultiStepLR: linear warmup from lr×factor, then ×gamma per passed step."""
    lr = config.lr * config.gamma ** sum(1 for s in config.steps if iteration >= s)
    if iteration < config.warmup_iterations:
        alpha = iteration / config.warmup_iterations
        lr *= config.warmup_factor * (1 - alpha) + alpha
    return lr


def build_optimizer(params: list[torch.nn.Parameter], config: OptimizerConfig) -> torch.optim.Optimizer:
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
