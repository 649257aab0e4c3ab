"""Data parallelism over the processes ``torchrun`` starts."""

from __future__ import annotations

import os
from collections import defaultdict

import torch
from torch import nn

from realuid.errors import check, warn


class Distributed:
    """Data parallelism over the processes ``torchrun`` starts (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``).

    With ``WORLD_SIZE > 1`` the process group is initialised from the
    environment (NCCL on CUDA, gloo on CPU) and each process takes the GPU
    ``cuda:LOCAL_RANK``. Every rank draws its own share of the batch
    (``batch_size / world_size``) from its own streams (seeds offset by
    ``1000 * rank``), and after each backward pass the gradients of the updated
    model are averaged over ranks (one all-reduce per bucket of about 2^24
    values) before clipping, so every rank takes the same step on the mean
    gradient of the whole batch, which keeps the replicas identical: the
    arithmetic of ``DistributedDataParallel``, done explicitly because a
    distillation step uses each network in several roles (the fake model
    trained in one update and frozen inside the generator's loss; two forward
    passes, generated and real, before one backward). A non-finite gradient on
    any rank becomes non-finite on all after the average, so every rank skips
    the same updates. Rank 0 alone evaluates and writes files; checkpoints hold
    every rank's random streams.
    """

    BUCKET = 1 << 24

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> torch.device:
        """Initialise the process group (once per process); returns this rank's device."""
        if not self.enabled:
            return device
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device

    def local_batch(self, batch_size: int, where: str) -> int:
        check(batch_size % self.world_size == 0, f"{where}.batch_size = {batch_size} does not split over "
              f"{self.world_size} processes", f"{where}.batch_size", f"use a multiple of {self.world_size}")
        return batch_size // self.world_size

    def broadcast_(self, *modules: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        if not self.enabled:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for module in modules:
                for tensor in list(module.parameters()) + list(module.buffers()):
                    dist.broadcast(tensor.data, 0)

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """Replace each gradient by its mean over ranks (parameters without a gradient are skipped)."""
        if not self.enabled:
            return
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        grads = [p.grad for p in params if p.grad is not None]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = defaultdict(list)
        for g in grads:
            by_dtype[g.dtype].append(g)
        for group in by_dtype.values():
            bucket, size = [], 0
            for g in group + [None]:
                if g is not None:
                    bucket.append(g)
                    size += g.numel()
                if bucket and (g is None or size >= self.BUCKET):
                    flat = _flatten_dense_tensors(bucket)
                    dist.all_reduce(flat)
                    flat /= self.world_size
                    for g_old, g_new in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                        g_old.copy_(g_new)
                    bucket, size = [], 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return value
        import torch.distributed as dist

        value = value.detach().clone().float()
        dist.all_reduce(value)
        return value / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def check_replicas(self, weights: dict, step: int) -> None:
        """Warn when the ranks' weights differ (they must stay identical: same start, same averaged updates)."""
        total = sum(float(t.double().sum()) for part in weights.values() for t in part.values()
                    if t.is_floating_point())
        sums = self.gather(total)
        if max(sums) - min(sums) > 1e-9 * max(1.0, abs(sums[0])):
            warn(f"step {step}: the data-parallel replicas differ (weight sums {sums}); this is a bug, please "
                 "report it with the recipe")

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()
