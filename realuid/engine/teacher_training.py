"""Teacher training: the matching loss of a path on real data, on the same loop as distillation.

A teacher is a recipe (``gin/fm_cifar_teacher.gin``, ``gin/edm_cifar_teacher.gin``)
whose trainer is :class:`MatchingTrainer`: the same run folder, checkpoints,
resume, metrics.jsonl, TensorBoard, progress bar, NaN guard, precision and
data parallelism as distillation (both run on :class:`~realuid.engine.loop.TrainingLoop`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from realuid.components import register
from realuid.couplings import Coupling
from realuid.data.base import DataSource
from realuid.devices import in_run_dtype
from realuid.distances import sq_norm
from realuid.engine.ema import EMA
from realuid.engine.optim import adam, check_adam, lr_schedule
from realuid.engine.trainer import Trainer
from realuid.errors import check, check_count
from realuid.fields import NetworkField
from realuid.metrics.base import Metric
from realuid.models.export import network_spec
from realuid.paths.base import MatchingPath
from realuid.sampling import SOLVERS, class_labels, sample_teacher


@register("trainer")
class MatchingTrainer(Trainer):
    """Trains a teacher f by the matching loss of a path on real data: min_f E w(t) ||f(x_t) - f_t(x_t | x0, x1)||^2.

    The universal matching loss (paper Def. 1, eq. 3; DESIGN §2) with
    ``x0 ~`` the data, ``x1`` from the coupling (Gaussian noise; labels pass
    through as the condition), ``t ~ p(t)`` and ``w(t)`` of the path, and the
    conditional target in ``parameterization`` (flow matching: velocity
    ``x1 - x0``, Lipman et al. 2023; EDM: the x0 target with EDM's weight and
    preconditioning, Karras et al. 2022). The per-sample loss sums over
    coordinates; its minimiser is the matching model ``E[f_c | x_t]``. An EMA
    of the network's weights is what teachers are loaded from
    (``CheckpointTeacher``). At every evaluation the EMA network draws
    ``TrainingLoop.eval_samples`` samples with the ODE sampler (``eval_solver``,
    ``eval_nfe`` field evaluations, fixed noise).

    Args:
        data: the real data (CIFAR10Shards, a GaussianMixture, ...).
        path: the matching path (RectifiedFlow, EDM, VP, ...).
        network: the backbone, read as ``parameterization`` through the path
            (class-conditional when the data are; label dropout for guidance is a network binding).
        coupling: how x1 is drawn (default IndependentGaussian).
        metrics: evaluated on the EMA network's samples.
        lr, betas, weight_decay: AdamW settings (torchcfm's CIFAR teacher: 2e-4, (0.9, 0.999), 0).
        warmup_steps, lr_decay, lr_final: lr schedule (linear warm-up, then constant/cosine/linear decay).
        grad_clip: max gradient norm (0 disables). ema_decay: EMA of the weights.
        eval_nfe, eval_solver: the sampler of evaluations.
    """

    name = "MatchingTrainer"
    kind = "teacher"
    label = "matching"
    progress_fields = (("loss", "loss"),)

    def __init__(self, data: DataSource, path: MatchingPath, network: nn.Module, coupling: Coupling | None = None,
                 metrics: tuple[Metric, ...] = (), parameterization: str = "velocity", lr: float = 2e-4,
                 betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0, warmup_steps: int = 0,
                 lr_decay: str = "constant", lr_final: float = 0.0, grad_clip: float = 1.0,
                 ema_decay: float = 0.9999, eval_nfe: int = 20, eval_solver: str = "heun"):
        where = self.name
        check_adam(where, {"lr": lr}, betas, warmup_steps, lr_decay, lr_final, grad_clip, ema_decay, weight_decay)
        self.eval_nfe = check_count(eval_nfe, f"{where}.eval_nfe", 1, 100_000)
        check(eval_solver in SOLVERS, f"{where}.eval_solver = {eval_solver!r} is not a solver", f"{where}.eval_solver",
              f"bind {where}.eval_solver to one of {', '.join(repr(s) for s in SOLVERS)}")
        super().__init__(data, path, coupling, metrics, parameterization)
        self.network, self.eval_solver = network, eval_solver
        # the network's full arguments, recorded in checkpoints: a teacher is refused by a recipe that
        # would build it differently (CheckpointTeacher), e.g. another time scale that the weights cannot show
        self.network_spec = network_spec(self.name)
        self.lr, self.betas, self.weight_decay = lr, tuple(betas), weight_decay
        self.warmup_steps, self.lr_decay, self.lr_final = warmup_steps, lr_decay, lr_final
        self.grad_clip, self.ema_decay = grad_clip, ema_decay

    def setup(self, loop) -> None:
        self.loop = loop
        self.network = self.network.to(loop.device, loop.dtype)
        loop.prepare(self.network)
        self.ema = EMA(self.network, self.ema_decay)   # before sharding: an FSDP module cannot be copied
        loop.dist.shard_networks(self.network, self.ema.model)
        # The training forward goes through DDP (gradients averaged over ranks); sampling uses the EMA copy.
        self.field = NetworkField(loop.dist.wrap(self.network), self.path, self.parameterization)
        self.optimizer = adam(self.network.parameters(), self.lr, self.betas, loop.device, self.weight_decay)
        loop.track(network=self.network, ema=self.ema, optimizer=self.optimizer)
        loop.track_lr(lr=lr_schedule(self.optimizer, loop.steps, self.warmup_steps, self.lr_decay, self.lr_final))

    def describe(self) -> dict:
        return {**super().describe(), "network": self.network_spec}

    # -- one step -------------------------------------------------------------------------------------------------
    @in_run_dtype
    def loss(self) -> torch.Tensor:
        """E w(t) ||f(x_t) - f_c||^2 on a fresh real batch (per-sample sums over coordinates)."""
        loop = self.loop
        n, rng, device, dtype, shard = loop.batch_size, loop.rng, loop.device, loop.dtype, loop.dist.shard
        real, coupled = loop.dist.coupled_rows(self.data, self.coupling, n, self.shape, rng, device, dtype)
        t = self.path.sample_t(n, rng, device).to(dtype)
        noise = torch.randn(n, *self.shape, generator=rng, device=device) if self.path.needs_extra_noise else None
        t, noise = shard(t), shard(noise)     # the global draws; this rank keeps its slice
        sample = self.path.interpolate(real.x, coupled.x1.to(dtype), t, noise, coupled.cond)
        with torch.no_grad():
            target = self.path.target(sample, self.parameterization)
        with loop.autocast():
            pred = self.field(sample.x_t, sample.t, sample.cond)
        per_sample = sq_norm(pred.to(dtype) - target)
        return (self.path.weight(sample.t, self.parameterization) * per_sample).mean()

    def train_step(self) -> dict:
        """One update of the network on the matching loss, then its EMA."""
        self.network.train()
        self.loop.begin_update()
        loss = self.loss()
        if self.loop.apply_update(loss, self.optimizer, "network", self.grad_clip):
            self.ema.update(self.network)
        return {"loss": loss.detach(), "loss_per_dim": loss.detach() / math.prod(self.shape)}

    # -- sampling -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    @in_run_dtype
    def sample(self, n: int, seed: int | None = None, nfe: int | None = None, solver: str | None = None,
               cfg: float = 1.0, use_ema: bool = True) -> torch.Tensor:
        """n samples of the (EMA) network's ODE from fixed noise; class labels cycle 0..C-1."""
        loop = self.loop
        network = self.ema.model if use_ema else self.network
        network.eval()
        field = NetworkField(network, self.path, self.parameterization)
        if loop.cuda_graphs:   # each ODE step a replay of one graph, its output copied out before the next
            plain = field

            def field(x, t, cond=None):
                loop.begin_update()
                return loop.owned(plain(x, t, cond))
        rng = torch.Generator(loop.device).manual_seed(self.sampling_seed(seed))
        out, chunk = [], 4 * loop.batch_size
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            z = torch.randn(m, *self.shape, generator=rng, device=loop.device, dtype=loop.dtype)
            cond = class_labels(start, m, self.data.num_classes, loop.device)
            mine = loop.dist.rows(m)   # each rank integrates its rows of the chunk
            x = sample_teacher(field, self.parameterization, self.path, z[mine], None if cond is None else cond[mine],
                               nfe or self.eval_nfe, solver or self.eval_solver, cfg, autocast=loop.autocast)
            out.append(loop.dist.gather_rows(x, m))
        return torch.cat(out)
