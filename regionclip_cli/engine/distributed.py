"""Processes of one training run: torchrun's environment (gloo on CPU, nccl on CUDA), or one.

Every collective here leaves its result on the device, so a step can ask "any rank?" or "sum over
ranks" without waiting for the device to drain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def any(self, flag: bool) -> bool:
        """True if `flag` is true on any process (a host value: waits for the others)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(value)
        return bool(value.item() > 0)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over processes, left on the device (no wait for the result)."""
        if not self.enabled:
            return tensor
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor)
        return tensor

    def all_any(self, flag: torch.Tensor) -> torch.Tensor:
        """A bool tensor: true where `flag` is true on any process (left on the device)."""
        return self.all_sum(flag.to(torch.int32)) > 0

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` (same shape on all) concatenated along dim 0, in rank order."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def global_mean(self, local_mean: torch.Tensor, local_count: torch.Tensor | int) -> torch.Tensor:
        """Rescale a per-process mean so that DDP's gradient average yields the global-batch mean.

        DDP averages gradients over the W processes; a term `m_r * n_r * W / sum(n)` on rank r
        averages to sum(m_r n_r) / sum(n), the mean over every rank's items.
        """
        if not self.enabled:
            return local_mean
        count = torch.as_tensor(local_count, dtype=torch.float32, device=local_mean.device)
        total = self.all_sum(count)
        return local_mean * torch.where(total > 0, count * self.world_size / total.clamp(min=1), 0.0)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group torchrun set up (WORLD_SIZE > 1), else run as a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(0, 1, device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return DistributedContext(rank, world_size, device)
