"""Data parallelism over the processes ``torchrun`` starts, on PyTorch's own engine: DDP or FSDP2.

With ``WORLD_SIZE > 1`` the process group is initialised from the environment
(NCCL on CUDA, gloo on CPU) and each process takes the GPU ``cuda:LOCAL_RANK``.

**One global batch, cut into slices.** Every rank draws the whole global batch
of noise, times and data indices from the *same* random streams and keeps its
own contiguous slice (rank r: rows ``r b .. (r + 1) b - 1`` with
``b = batch_size / world_size``); of the real data it reads and decodes only
that slice (:meth:`Distributed.coupled_rows`). So N processes x B/N compute exactly what one
process x B computes, up to the order of floating-point sums, and a run
resumed with another number of processes continues the same streams.

**Gradients** (``TrainingLoop.parallel``):

- ``'ddp'``: each trained network's update goes through one
  ``DistributedDataParallel`` module (:meth:`Distributed.wrap`), which averages
  the gradients in buckets while the backward pass runs; frozen uses of a
  network (the fake model inside the generator's loss, the generator without
  gradients in the fake step, the teacher) call the plain module and
  synchronise nothing. Every rank holds every weight.
- ``'fsdp'``: every network (generator, fake model, discriminator heads, the
  frozen teacher, the generator's EMA) is sharded in place by FSDP2's
  ``fully_shard`` (:meth:`Distributed.shard_networks`): each rank keeps ``1/N`` of every
  weight, gradient and Adam moment; a forward all-gathers a block's weights
  (the blocks the network lists in ``compile_regions()``, then the rest) and
  frees them after, a backward reduce-scatters the gradients of the weights
  that require them. Under ``precision = 'bf16'`` weights are all-gathered in
  bf16 and gradients reduced in float32 (``MixedPrecisionPolicy``); the
  forward's inputs are not cast (autocast decides, as without FSDP).

A non-finite gradient on any rank is non-finite on every rank after the
average (and the gradient norm is computed over the whole sharded gradient),
so every rank skips the same updates. Rank 0 alone writes files; evaluations
are sampled on every rank and gathered (:meth:`Distributed.gather_rows`).

**Checkpoints are gathered, not sharded**: :meth:`Distributed.full_state`
all-gathers every sharded tensor of a state (weights, Adam moments), so a
checkpoint holds whole tensors in exactly the layout of a one-process run, and
any checkpoint resumes under either mode on any number of processes
(:meth:`Distributed.load_part` scatters the whole tensors into the shards).
This costs one full copy of each part in memory while saving; a model too big
for that would need ``torch.distributed.checkpoint``'s sharded files instead.
"""

from __future__ import annotations

import datetime
import hashlib
import os

import torch
from torch import nn

from realuid.couplings import Coupling, CoupledBatch
from realuid.data.base import ALL_ROWS, Batch, DataSource
from realuid.errors import UserError, check, warn

#: how long a collective may wait for a rank before the process group gives up. Long enough for rank 0 to
#: compute an evaluation's metrics (an Inception FID of 50k samples) while the others wait; a rank that dies
#: is noticed sooner by torchrun, which stops the others at once.
TIMEOUT = datetime.timedelta(minutes=30)

#: the ways gradients are shared (``TrainingLoop.parallel``; module docstring)
PARALLEL_MODES = ("ddp", "fsdp")


class Distributed:
    """The process group of a data-parallel run (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``; module docstring)."""

    def __init__(self, mode: str = "ddp", precision: str = "fp32"):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.mode, self.precision = mode, precision
        self.device_type = "cpu"
        self._mesh = None
        self._sharded: list[nn.Module] = []

    @property
    def sharded(self) -> bool:
        """True when the networks are sharded by FSDP2 (``parallel = 'fsdp'`` over several processes)."""
        return self.enabled and self.mode == "fsdp"

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

        self.device_type = device.type
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

    def batch_rows(self, n: int) -> slice:
        """This rank's contiguous rows of a global batch of ``n``: ``r b .. (r + 1) b - 1``, ``b = n / world_size``."""
        if not self.enabled:
            return ALL_ROWS
        b = n // self.world_size
        return slice(self.rank * b, (self.rank + 1) * b)

    def shard(self, x):
        """This rank's contiguous slice of a global batch (a tensor with the batch first, or None)."""
        if not self.enabled or not isinstance(x, torch.Tensor):
            return x
        return x[self.batch_rows(x.shape[0])]

    def coupled_rows(self, data: DataSource, coupling: Coupling, n: int, shape: tuple[int, ...],
                     rng: torch.Generator, device: torch.device, dtype: torch.dtype, read_data: bool = True
                     ) -> tuple[Batch | None, CoupledBatch]:
        """This rank's rows of a global real batch of ``n`` (in ``dtype``; None unless ``read_data``) and of its
        coupling.

        A coupling that reads the data (``coupling.needs_data``: a degradation drawing noise per image,
        minibatch OT over the whole batch) sees the whole global batch, so every rank reads all of it;
        otherwise each rank reads only its own rows (:meth:`DataSource.next_batch`'s ``rows``), and the
        coupling, given them, still draws its noise for all ``n`` so that the random streams stay in step.
        """
        whole = coupling.needs_data
        real = data.next_batch(n, device, rows=ALL_ROWS if whole else self.batch_rows(n)) if read_data else None
        if real is not None:
            real.x = real.x.to(dtype)
        coupled = coupling.sample(real, n, shape, rng, device)
        cond = self.shard(coupled.cond) if whole else coupled.cond
        if whole and real is not None:
            real = Batch(self.shard(real.x), self.shard(real.label))
        return real, CoupledBatch(self.shard(coupled.x1), cond)

    def rows(self, n: int) -> slice:
        """The rows of ``n`` (not necessarily divisible) that this rank computes when sampling."""
        per = -(-n // self.world_size)
        return slice(min(n, self.rank * per), min(n, (self.rank + 1) * per))

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module an update goes through: ``DistributedDataParallel(module)`` under DDP (it broadcasts
        rank 0's weights); the module itself in one process or under FSDP (sharded by :meth:`shard_networks`)."""
        if not self.enabled or self.sharded:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def shard_networks(self, *modules: nn.Module | None) -> None:
        """Under FSDP, ``fully_shard`` each module in place: its ``compile_regions()`` blocks (found anywhere
        inside it) as units of their own, then the module; modules without weights are left alone.

        Every module a trainer calls directly must be sharded as a unit of its own (FSDP all-gathers in
        the forward of the module it sharded), and before any copy of it is made (FSDP modules cannot be
        deep-copied: the EMA copies the generator first).
        """
        if not self.sharded:
            return
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                      cast_forward_inputs=False) if self.precision == "bf16" else \
            MixedPrecisionPolicy()
        for module in modules:
            if not isinstance(module, nn.Module) or not any(True for _ in module.parameters()):
                continue
            for inner in module.modules():
                for region in (inner.compile_regions() if hasattr(inner, "compile_regions") else []):
                    fully_shard(region, mesh=self.mesh(), mp_policy=policy)
            for inner in list(module.modules()):
                if inner is not module and getattr(inner, "forward_methods", ()):
                    # a network whose other methods run its weights (UNet.features, read by a discriminator
                    # head): a unit of its own, whose weights those methods gather as forward does
                    fully_shard(inner, mesh=self.mesh(), mp_policy=policy)
                    for name in inner.forward_methods:
                        register_fsdp_forward_method(inner, name)
            fully_shard(module, mesh=self.mesh(), mp_policy=policy)
            self._sharded.append(module)

    def reshard(self) -> None:
        """Under FSDP, every sharded network back to its shards (frees gathered weights).

        A module sharded as a root keeps its gathered weights registered after a
        forward that no backward followed (a frozen or no-grad use), so until
        then ``parameters()`` would name the gathered copies, not the shards
        that the optimiser and the EMA hold.
        """
        for module in self._sharded:
            module.reshard()

    def mesh(self):
        """The one-dimensional device mesh of all ranks (FSDP's)."""
        if self._mesh is None:
            from torch.distributed.device_mesh import init_device_mesh

            self._mesh = init_device_mesh(self.device_type, (self.world_size,))
        return self._mesh

    def full_state(self, tree):
        """``tree`` (a state dict, nested) with every sharded tensor all-gathered into a whole one.

        A collective: every rank calls it on the same state, in the same order.
        """
        from torch.distributed.tensor import DTensor

        if isinstance(tree, DTensor):
            return tree.full_tensor()
        if isinstance(tree, dict):
            return {key: self.full_state(value) for key, value in tree.items()}
        if isinstance(tree, (list, tuple)):
            return type(tree)(self.full_state(value) for value in tree)
        return tree

    def load_part(self, part, state: dict) -> None:
        """``part.load_state_dict(state)``, first cutting whole tensors into this rank's shards where
        ``part`` is sharded (a module's sharded weights, an optimiser's moments of sharded weights)."""
        if self.sharded:
            if isinstance(part, nn.Module):
                state = self._like(part.state_dict(), state)
            elif isinstance(part, torch.optim.Optimizer):
                params = [p for group in part.param_groups for p in group["params"]]
                moments = {}
                for index, entry in state.get("state", {}).items():
                    param = params[int(index)] if int(index) < len(params) else None
                    moments[index] = {name: self._like_tensor(param, value) if param is not None else value
                                      for name, value in entry.items()}
                state = {**state, "state": moments}
        part.load_state_dict(state)

    def _like(self, template: dict, state: dict) -> dict:
        return {key: self._like_tensor(template.get(key), value) for key, value in state.items()}

    @staticmethod
    def _like_tensor(template, value):
        """``value`` distributed as ``template`` is, when ``template`` is a sharded tensor of its shape."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        if isinstance(template, DTensor) and isinstance(value, torch.Tensor) and not isinstance(value, DTensor) \
                and tuple(value.shape) == tuple(template.shape):
            return distribute_tensor(value.to(template.device_mesh.device_type), template.device_mesh,
                                     template.placements)
        return value

    def whole(self, value: torch.Tensor) -> torch.Tensor:
        """A sharded result (FSDP's gradient norm) as a plain tensor; anything else unchanged."""
        from torch.distributed.tensor import DTensor

        return value.full_tensor() if isinstance(value, DTensor) else value

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

    def close(self) -> None:
        """Tear the process group down (gloo's threads abort the interpreter's exit when left running)."""
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()
