"""Teacher training: the matching loss of a path on real data, on the same loop as distillation.

A teacher is a recipe (``gin/fm_cifar_teacher.gin``, ``gin/edm_cifar_teacher.gin``)
whose trainer is :class:`MatchingTrainer`: same run folder, checkpoints,
resume, metrics.jsonl, TensorBoard, progress bar, NaN guard, precision and
data parallelism as :class:`~realuid.engine.distillation.DistillationTrainer`
(both are :class:`~realuid.engine.loop.TrainingLoop`).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from realuid.couplings import Coupling, IndependentGaussian
from realuid.data.base import DataSource
from realuid.distances import sq_norm
from realuid.pictures import image_grid_png
from realuid.engine.ema import EMA
from realuid.engine.loop import NonFiniteGuard, TrainingLoop, build_schedule, compile_networks, to_channels_last
from realuid.engine.reporting import MetricsLog
from realuid.errors import check, check_range
from realuid.fields import NetworkField
from realuid.metrics.base import Metric
from realuid.paths.base import MatchingPath
from realuid.components import register
from realuid.sampling import SOLVERS, class_labels, sample_teacher


@register("trainer")
class MatchingTrainer(TrainingLoop):
    """Trains a teacher f by the matching loss of a path on real data: min_f E w(t) ||f(x_t) - f_t(x_t | x0, x1)||^2.

    The universal matching loss (paper Def. 1, eq. 3; DESIGN §2) with
    ``x0 ~`` the data, ``x1`` from the coupling (Gaussian noise; labels pass
    through as the condition), ``t ~ p(t)`` and ``w(t)`` of the path, and the
    conditional target in ``parameterization`` (flow matching: velocity
    ``x1 - x0``, Lipman et al. 2023; EDM: the x0 target with EDM's weight and
    preconditioning, Karras et al. 2022). The per-sample loss sums over
    coordinates; its minimiser is the matching model ``E[f_c | x_t]``. An EMA
    of the network's weights is what teachers are loaded from
    (``CheckpointTeacher``). Every ``eval_every`` steps the EMA network draws
    ``eval_samples`` samples with the ODE sampler (``eval_solver``,
    ``eval_nfe`` field evaluations, fixed noise): their metrics go to
    ``metrics.jsonl`` and, for images, a grid to ``RUN/samples/``.

    Args:
        data: the real data (CIFAR10Shards, a GaussianMixture, ...).
        path: the matching path (RectifiedFlow, EDM, VP, ...).
        network: the backbone, read as ``parameterization`` through the path
            (class-conditional when the data are; label dropout for guidance is a network binding).
        coupling: how x1 is drawn (default IndependentGaussian).
        metrics: evaluated on the EMA network's samples.
        steps, batch_size: optimisation steps and (global) batch.
        lr, betas, weight_decay: Adam(W) settings (torchcfm's CIFAR teacher: 2e-4, (0.9, 0.999), 0).
        warmup_steps, lr_decay, lr_final: schedule (linear warm-up, then constant/cosine/linear decay).
        grad_clip: max gradient norm (0 disables). ema_decay: EMA of the weights.
        eval_every, eval_samples, eval_nfe, eval_solver: evaluation interval, size and sampler.
        checkpoint_every, keep_checkpoints, max_bad_steps, device, dtype: as DistillationTrainer.
        precision, channels_last, compile, tensorboard, time_limit: as DistillationTrainer.
    """

    progress_label = "matching"
    weight_parts = ("network", "ema")
    owner = "MatchingTrainer"
    model_kind = "teacher"

    def __init__(self, data: DataSource, path: MatchingPath, network: nn.Module, out_dir: str | Path, seed: int = 0,
                 coupling: Coupling | None = None, metrics: tuple[Metric, ...] = (),
                 parameterization: str = "velocity", steps: int = 2000, batch_size: int = 128, lr: float = 2e-4,
                 betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0, warmup_steps: int = 0,
                 lr_decay: str = "constant", lr_final: float = 0.0, grad_clip: float = 1.0,
                 ema_decay: float = 0.9999, eval_every: int = 500, eval_samples: int = 1000, eval_nfe: int = 20,
                 eval_solver: str = "heun", checkpoint_every: int = 1000, keep_checkpoints: int = 2,
                 max_bad_steps: int = 20, device: str = "auto", dtype: str = "float32", progress: bool = True,
                 precision: str = "fp32", channels_last: bool = False, compile: bool = False,
                 tensorboard: bool = True, time_limit: float = 0.0):
        where = self.owner
        for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every),
                            ("eval_samples", eval_samples), ("eval_nfe", eval_nfe),
                            ("checkpoint_every", checkpoint_every), ("keep_checkpoints", keep_checkpoints),
                            ("max_bad_steps", max_bad_steps)):
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                  f"{where}.{name} must be a positive integer, got {value!r}", where,
                  f"bind {where}.{name} to an integer >= 1")
        check(isinstance(warmup_steps, int) and warmup_steps >= 0, f"{where}.warmup_steps must be an integer >= 0, "
              f"got {warmup_steps!r}", where, f"bind {where}.warmup_steps to 0 or more steps")
        check_range(lr, f"{where}.lr", 0.0, low_open=True)
        check_range(weight_decay, f"{where}.weight_decay", 0.0)
        check_range(ema_decay, f"{where}.ema_decay", 0.0, 1.0, high_open=True)
        check_range(grad_clip, f"{where}.grad_clip", 0.0)
        check_range(lr_final, f"{where}.lr_final", 0.0, 1.0)
        check(isinstance(betas, (tuple, list)) and len(betas) == 2, f"{where}.betas must be two numbers, got "
              f"{betas!r}", where, f"bind {where}.betas = (0.9, 0.999)")
        for i, beta in enumerate(betas):
            check_range(beta, f"{where}.betas[{i}]", 0.0, 1.0, high_open=True)
        check(eval_solver in SOLVERS, f"{where}.eval_solver = {eval_solver!r} is not a solver", where,
              f"bind {where}.eval_solver to one of {', '.join(repr(s) for s in SOLVERS)}")
        path.check_parameterization(parameterization, f"{where}.parameterization")

        self.out_dir = Path(out_dir)
        self.steps, self.batch_size = steps, batch_size
        self.eval_every, self.eval_samples, self.eval_nfe, self.eval_solver = eval_every, eval_samples, eval_nfe, \
            eval_solver
        self.checkpoint_every, self.keep_checkpoints = checkpoint_every, keep_checkpoints
        self.grad_clip, self.show_progress = grad_clip, progress
        self.setup_machinery(seed, device, dtype, precision, tensorboard, time_limit)
        self.local_batch_size = self.dist.local_batch(batch_size, where)
        self.data, self.path, self.parameterization = data, path, parameterization
        self.coupling = coupling if coupling is not None else IndependentGaussian()
        path.bind(parameterization, self.coupling)
        self.metrics = [m.bind(data) for m in metrics]
        self.shape = tuple(data.shape)

        self.network = network.to(self.device, self.dtype)
        if channels_last and data.is_image:
            to_channels_last(self.network)
        self.dist.broadcast_(self.network)
        self.field = NetworkField(self.network, path, parameterization)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=lr, betas=tuple(betas),
                                           weight_decay=weight_decay, fused=self.device.type == "cuda")
        self.schedule = build_schedule(self.optimizer, steps, warmup_steps, lr_decay, lr_final)
        self.ema = EMA(self.network, ema_decay)
        self.guard = NonFiniteGuard(max_bad_steps, owner=where)
        if compile:
            compile_networks(self.network)

        self.data.seed(self.stream_seed + 1)
        self.rng = torch.Generator(self.device).manual_seed(self.stream_seed + 2)
        self.log = MetricsLog(self.out_dir / "metrics.jsonl")
        self.last_samples: torch.Tensor | None = None

    # -- one step -------------------------------------------------------------------------------------------------------
    def loss(self) -> torch.Tensor:
        """E w(t) ||f(x_t) - f_c||^2 on a fresh real batch (per-sample sums over coordinates)."""
        n = self.local_batch_size
        real = self.data.next_batch(n, self.device)
        x0 = real.x.to(self.dtype)
        coupled = self.coupling.sample(real, n, self.shape, self.rng, self.device)
        t = self.path.sample_t(n, self.rng, self.device).to(self.dtype)
        noise = torch.randn(n, *self.shape, generator=self.rng, device=self.device) \
            if self.path.needs_extra_noise else None
        sample = self.path.interpolate(x0, coupled.x1.to(self.dtype), t, noise, coupled.cond)
        with torch.no_grad():
            target = self.path.target(sample, self.parameterization)
        with self.autocast():
            pred = self.field(sample.x_t, sample.t, sample.cond)
        per_sample = sq_norm(pred.to(self.dtype) - target)
        return (self.path.weight(sample.t) * per_sample).mean()

    def train_step(self) -> dict:
        """One update of the network on the matching loss, EMA, schedule."""
        self.network.train()
        loss = self.loss()
        if self.apply_update(loss, list(self.network.parameters()), self.optimizer, "network", self.grad_clip):
            self.ema.update(self.network)
        with warnings.catch_warnings():  # torch warns when the first update was skipped (non-finite)
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step()` before", UserWarning)
            self.schedule.step()
        self.step += 1
        return {"loss": loss.detach(), "loss_per_dim": loss.detach() / math.prod(self.shape)}

    # -- evaluation -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, nfe: int | None = None, solver: str | None = None, seed: int | None = None,
               cfg: float = 1.0, use_ema: bool = True) -> torch.Tensor:
        """n samples of the (EMA) network's ODE from fixed noise; class labels cycle 0..C-1."""
        network = self.ema.model if use_ema else self.network
        network.eval()
        field = NetworkField(network, self.path, self.parameterization)
        rng = torch.Generator(self.device).manual_seed(self.seed + 10_000 if seed is None else seed)
        out, chunk = [], 4 * self.local_batch_size
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            z = torch.randn(m, *self.shape, generator=rng, device=self.device, dtype=self.dtype)
            cond = class_labels(start, m, self.data.num_classes, self.device)
            out.append(sample_teacher(field, self.parameterization, self.path, z, cond, nfe or self.eval_nfe,
                                      solver or self.eval_solver, cfg, autocast=self.autocast))
        return torch.cat(out)

    def learning_rates(self) -> dict:
        return {"lr": self.schedule.get_last_lr()[0]}

    @staticmethod
    def _status(logs: dict, row: dict | None) -> str:
        parts = [f"loss {float(logs['loss']):.4g}"]
        if row is not None and "fd_classifier" in row:
            parts.append(f"fd {row['fd_classifier']:.2f}")
        if row is not None and "sw" in row:
            parts.append(f"sw {row['sw']:.3f}")
        return " ".join(parts)

    def write_artifacts(self) -> None:
        """Final samples: a PNG grid (images) or ``samples.npy`` (vector data)."""
        from realuid.engine.distillation import _npy_bytes
        from realuid.io import atomic_write_bytes
        from realuid.pictures import scatter_png

        samples = self.last_samples if self.last_samples is not None else self.sample(self.eval_samples)
        if self.data.is_image:
            image_grid_png(samples[:64], self.out_dir / "samples.png")
            return
        atomic_write_bytes(self.out_dir / "samples.npy", _npy_bytes(samples.detach().cpu().numpy()))
        if self.shape == (2,):
            scatter_png(samples, self.out_dir / "samples.png", getattr(self.data, "log_prob", None))

    # -- checkpoints ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "step": self.step, "wall_time": self.wall_time,
            "network": self.network.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "rng": self.rng.get_state(), "torch_rng": torch.get_rng_state(), "data": self.data.state_dict(),
            "guard": self.guard.state_dict(), "running": self.running_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step, self.wall_time = int(state["step"]), float(state["wall_time"])
        self.network.load_state_dict(state["network"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.load_rank_streams(state)
        self.guard.load_state_dict(state["guard"])
        self.running = defaultdict(lambda: [0.0, 0], {k: list(v) for k, v in state["running"].items()})
