"""Data parallelism over the processes ``torchrun`` starts, on PyTorch's ``DistributedDataParallel``.

With ``WORLD_SIZE > 1`` the process group is initialised from the environment
(NCCL on CUDA, gloo on CPU) and each process takes the GPU ``cuda:LOCAL_RANK``.

**One global batch, cut into slices.** Every rank draws the whole global batch
of noise, times and data indices from the *same* random streams and keeps its
own contiguous slice (rank r: rows ``r b .. (r + 1) b - 1`` with
``b = batch_size / world_size``). So N processes x B/N compute exactly what one
process x B computes, up to the order of floating-point sums, and a run
resumed with another number of processes continues the same streams.

**Gradients.** Each trained network's update goes through one DDP-wrapped
module (:meth:`Distributed.wrap`), which averages the gradients in buckets
while the backward pass runs; frozen uses of a network (the fake model inside
the generator's loss, the generator without gradients in the fake step, the
teacher) call the plain module and synchronise nothing. A non-finite gradient
on any rank is non-finite on every rank after the average, so every rank
skips the same updates. Rank 0 alone writes files; evaluations are sampled on
every rank and gathered (:meth:`Distributed.gather_rows`).
"""

from __future__ import annotations

import datetime
import hashlib
import os

import torch
from torch import nn

from realuid.errors import UserError, check, warn

#: how long a collective may wait for a rank before the process group gives up. Long enough for rank 0 to
#: compute an evaluation's metrics (an Inception FID of 50k samples) while the others wait; a rank that dies
#: is noticed sooner by torchrun, which stops the others at once.
TIMEOUT = datetime.timedelta(minutes=30)


class Distributed:
    """The process group of a data-parallel run (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``; module docstring)."""

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
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        return device

    def local_batch(self, batch_size: int, where: str) -> int:
        check(batch_size % self.world_size == 0, f"{where}.batch_size = {batch_size} does not split over "
              f"{self.world_size} processes", f"{where}.batch_size", f"use a multiple of {self.world_size}")
        return batch_size // self.world_size

    def shard(self, x):
        """This rank's contiguous slice of a global batch (a tensor with the batch first, or None)."""
        if not self.enabled or not isinstance(x, torch.Tensor):
            return x
        b = x.shape[0] // self.world_size
        return x[self.rank * b:(self.rank + 1) * b]

    def rows(self, n: int) -> slice:
        """The rows of ``n`` (not necessarily divisible) that this rank computes when sampling."""
        per = -(-n // self.world_size)
        return slice(min(n, self.rank * per), min(n, (self.rank + 1) * per))

    def wrap(self, module: nn.Module) -> nn.Module:
        """``DistributedDataParallel(module)`` under data parallelism (it broadcasts rank 0's weights), else the module."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over ranks (for logged numbers; gradients are DDP's)."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        value = value.detach().clone().double()
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

    def gather_rows(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The ``n`` rows that the ranks computed (:meth:`rows`), in order, on every rank."""
        if not self.enabled:
            return x
        import torch.distributed as dist

        per = -(-n // self.world_size)
        padded = x.new_zeros((per, *x.shape[1:]))
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat(parts)[:n]

    def check_agreement(self, config: str, version: str) -> None:
        """Refuse to start when the ranks run different configs or code versions (a UserError naming the ranks)."""
        if not self.enabled:
            return
        mine = (hashlib.sha256(config.encode()).hexdigest()[:12], version)
        everyone = self.gather(mine)
        odd = [rank for rank, theirs in enumerate(everyone) if theirs != everyone[0]]
        if odd:
            raise UserError(f"the data-parallel ranks disagree: rank 0 runs config {everyone[0][0]} of realuid "
                            f"{everyone[0][1]}, rank(s) {odd} run {[everyone[r] for r in odd]}",
                            "torchrun", "start every process from the same checkout with the same recipe and bindings")

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
