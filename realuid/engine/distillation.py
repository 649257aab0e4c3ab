"""The inverse-distillation trainer: one loop for every objective, path, network and data source.

Each step (DESIGN §2, paper Algorithm 1):

1. ``fake_steps`` times: draw a batch (real ``x0*`` if needed, coupling ``x1``,
   ``z``, ``t``), make ``x0 = G(z)`` without gradients, and minimise the
   objective's fake loss over the fake model f;
2. once: draw a fresh batch with gradients through ``x0 = G(z)`` and minimise
   the objective's generator loss over theta with f frozen;
3. update the generator's EMA, step the lr schedules, evaluate and checkpoint
   on their intervals.

Randomness comes from three streams, each saved in checkpoints so that a
resumed run continues bit for bit: the training generator (z, t, x1), the
data source's own generator, and the global torch RNG (dropout).
"""

from __future__ import annotations

import io
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from realuid.couplings import Coupling, IndependentGaussian
from realuid.data.base import DataSource
from realuid.pictures import image_grid_png, scatter_png
from realuid.checkpoints import latest_good, load_checkpoint
from realuid.io import atomic_write_bytes
from realuid.engine.ema import EMA
from realuid.engine.loop import (DTYPES, NonFiniteGuard, TrainingDiverged, TrainingLoop,  # noqa: F401 (re-exported)
                                 build_schedule, compile_networks, default_dtype, resolve_device, to_channels_last)
from realuid.engine.loop import in_run_dtype as _in_run_dtype
from realuid.engine.reporting import MetricsLog
from realuid.errors import UserError, check, check_range
from realuid.fields import NetworkField
from realuid.metrics.base import Metric
from realuid.objectives import Fields, Objective
from realuid.paths.base import MatchingPath, PathSample
from realuid.components import register


@register("trainer")
class DistillationTrainer(TrainingLoop):
    """One-step inverse distillation: K fake-model steps, then one generator step (UID, RealUID, SiD, ...).

    Args:
        data: real data source (also the generator's shape and labels).
        path: the matching path of teacher and fake model.
        teacher: frozen field f* (an ``AnalyticTeacher`` or a trained one).
        generator: the one-step generator.
        fake: backbone of the fake model f, read in ``parameterization``.
        objective: fake and generator losses (``RealUID``, ...).
        coupling: how x1 is drawn (default ``IndependentGaussian``).
        metrics: evaluated on ``eval_samples`` samples of the EMA generator every ``eval_every`` steps.
        parameterization: the field space the objective works in.
        steps: generator steps; each is preceded by ``fake_steps`` fake-model steps (paper: K = 5).
        lr_generator, lr_fake, betas: Adam settings (paper: betas (0, 0.999)).
        warmup_steps, lr_decay, lr_final: schedule (linear warm-up, then constant/cosine/linear decay).
        grad_clip: max gradient norm per update (0 disables).
        ema_decay: EMA of the generator's weights.
        generator_init, fake_init: "scratch" or "teacher" (copy the teacher network's weights).
        generator_checkpoint: a run folder (or checkpoint file) whose EMA generator starts this run:
            a second stage such as RealUID fine-tuning (DESIGN §3).
        eval_every, eval_samples, checkpoint_every, keep_checkpoints: reporting intervals and sizes.
        max_bad_steps: stop after this many non-finite steps in a row.
        device: "auto", "cpu" or "cuda[:i]". dtype: "float32" or "float64".
        precision: "fp32" or "bf16" (autocast of forward passes and losses; weights stay float32).
        channels_last: store image networks' convolution weights channels-last (NHWC). Off by
            default: slower for the CIFAR U-Net on an H100 (docs/RESULTS.md).
        compile: ``torch.compile`` the generator's and fake model's networks and the teacher's.
        tensorboard: also write the metrics as TensorBoard scalars under ``RUN/tensorboard``.
        time_limit: stop (final evaluation and checkpoint) once training has taken this many
            seconds (summed over resumes); 0: no limit.

    Data parallel under ``torchrun --nproc_per_node N -m realuid run RECIPE``
    (:class:`~realuid.engine.loop.Distributed`): ``batch_size`` is the global
    batch, each rank draws ``batch_size / N`` from its own streams.
    """

    progress_label = "distilling"
    weight_parts = ("generator", "fake", "ema", "objective")
    owner = "DistillationTrainer"

    def __init__(self, data: DataSource, path: MatchingPath, teacher: nn.Module, generator: nn.Module,
                 fake: nn.Module, objective: Objective, out_dir: str | Path, seed: int = 0,
                 coupling: Coupling | None = None, metrics: tuple[Metric, ...] = (),
                 parameterization: str = "velocity", steps: int = 2000, batch_size: int = 512,
                 fake_steps: int = 5, lr_generator: float = 2e-3, lr_fake: float = 2e-3,
                 betas: tuple[float, float] = (0.0, 0.999), warmup_steps: int = 200, lr_decay: str = "cosine",
                 lr_final: float = 0.05, grad_clip: float = 1.0, ema_decay: float = 0.999,
                 generator_init: str = "scratch", fake_init: str = "scratch",
                 generator_checkpoint: str | None = None, eval_every: int = 500,
                 eval_samples: int = 5000, checkpoint_every: int = 1000, keep_checkpoints: int = 2,
                 max_bad_steps: int = 20, device: str = "auto", dtype: str = "float32", progress: bool = True,
                 precision: str = "fp32", channels_last: bool = False, compile: bool = False,
                 tensorboard: bool = True, time_limit: float = 0.0):
        where = "DistillationTrainer"
        for name, value in (("steps", steps), ("batch_size", batch_size), ("fake_steps", fake_steps),
                            ("eval_every", eval_every), ("eval_samples", eval_samples),
                            ("checkpoint_every", checkpoint_every), ("max_bad_steps", max_bad_steps)):
            check(isinstance(value, int) and value >= 1, f"{where}.{name} must be a positive integer, got {value!r}",
                  where, f"bind {where}.{name} to an integer >= 1")
        check_range(lr_generator, f"{where}.lr_generator", 0.0, low_open=True)
        check_range(lr_fake, f"{where}.lr_fake", 0.0, low_open=True)
        check_range(ema_decay, f"{where}.ema_decay", 0.0, 1.0, high_open=True)
        check(isinstance(warmup_steps, int) and warmup_steps >= 0, f"{where}.warmup_steps must be an integer >= 0, "
              f"got {warmup_steps!r}", where, f"bind {where}.warmup_steps to 0 or more steps")
        check(isinstance(keep_checkpoints, int) and keep_checkpoints >= 1, f"{where}.keep_checkpoints must be an "
              f"integer >= 1, got {keep_checkpoints!r}", where, f"bind {where}.keep_checkpoints to 1 or more")
        check_range(grad_clip, f"{where}.grad_clip", 0.0)
        check_range(lr_final, f"{where}.lr_final", 0.0, 1.0)
        check(isinstance(betas, (tuple, list)) and len(betas) == 2, f"{where}.betas must be two numbers, got "
              f"{betas!r}", where, f"bind {where}.betas = (0.0, 0.999)")
        for i, beta in enumerate(betas):
            check_range(beta, f"{where}.betas[{i}]", 0.0, 1.0, high_open=True)
        check(dtype in DTYPES, f"unknown dtype {dtype!r}", f"{where}.dtype", f"use one of {list(DTYPES)}")
        for name, value in (("generator_init", generator_init), ("fake_init", fake_init)):
            check(value in ("scratch", "teacher"), f"{where}.{name} = {value!r} is not 'scratch' or 'teacher'",
                  where, f"bind {where}.{name} = 'scratch' or 'teacher'")
        path.check_parameterization(parameterization, f"{where}.parameterization")

        self.out_dir = Path(out_dir)
        self.seed, self.steps, self.batch_size, self.fake_steps = seed, steps, batch_size, fake_steps
        self.eval_every, self.eval_samples = eval_every, eval_samples
        self.checkpoint_every, self.keep_checkpoints = checkpoint_every, keep_checkpoints
        self.grad_clip, self.show_progress = grad_clip, progress
        self.setup_machinery(seed, device, dtype, precision, tensorboard, time_limit)
        self.local_batch_size = self.dist.local_batch(batch_size, where)
        self.data, self.path, self.objective = data, path, objective
        self.coupling = coupling if coupling is not None else IndependentGaussian()
        path.bind(parameterization, self.coupling)  # loss-space weights; a bridge checks its coupling is paired
        self.metrics = [m.bind(data) for m in metrics]
        self.shape = tuple(data.shape)

        teacher = teacher.bind(path, data, parameterization) if hasattr(teacher, "bind") else teacher
        self.teacher = teacher.to(self.device, self.dtype).requires_grad_(False).eval()
        self.generator = generator.bind(path).to(self.device, self.dtype)
        self.fake = NetworkField(fake, path, parameterization).to(self.device, self.dtype)
        self._initialise_from_teacher(generator_init, fake_init)
        if generator_checkpoint is not None:
            self._initialise_from_run(generator_checkpoint)
        self.fields = Fields(self.teacher, self.fake, path, parameterization)
        self._check_shapes()
        self.objective_modules = nn.ModuleList(objective.trainable_modules()).to(self.device, self.dtype)
        if channels_last and data.is_image:
            to_channels_last(self.generator, self.fake, self.teacher, self.objective_modules)
        self.dist.broadcast_(self.generator, self.fake, self.objective_modules)

        fused = self.device.type == "cuda"   # one kernel per update instead of one per tensor group
        self.opt_generator = torch.optim.Adam(self.generator.parameters(), lr=lr_generator, betas=tuple(betas),
                                              fused=fused)
        self.opt_fake = torch.optim.Adam(self._fake_side_parameters(), lr=lr_fake, betas=tuple(betas), fused=fused)
        self.sched_generator = build_schedule(self.opt_generator, steps, warmup_steps, lr_decay, lr_final)
        self.sched_fake = build_schedule(self.opt_fake, steps, warmup_steps, lr_decay, lr_final)
        self.ema = EMA(self.generator, ema_decay)
        self.guard = NonFiniteGuard(max_bad_steps)
        if compile:
            compile_networks(self.generator.network, self.fake.network, getattr(self.teacher, "network", None))

        self.data.seed(self.stream_seed + 1)   # seed + 1000 * rank under data parallelism
        self.rng = torch.Generator(self.device).manual_seed(self.stream_seed + 2)
        self.log = MetricsLog(self.out_dir / "metrics.jsonl")
        self.last_samples: torch.Tensor | None = None

    # -- set-up ------------------------------------------------------------------------------
    def _initialise_from_teacher(self, generator_init: str, fake_init: str) -> None:
        network = getattr(self.teacher, "network", None)
        for role, init, target in (("generator", generator_init, self.generator.network),
                                   ("fake", fake_init, self.fake.network)):
            if init != "teacher":
                continue
            if not isinstance(network, nn.Module):
                raise UserError(f"{type(self.teacher).__name__} has no network to copy into the {role}",
                                f"DistillationTrainer.{role}_init", f"bind DistillationTrainer.{role}_init = 'scratch'")
            try:
                target.load_state_dict(network.state_dict())
            except RuntimeError as err:
                raise UserError(f"the teacher's network does not fit the {role}'s ({str(err).splitlines()[0]})",
                                f"DistillationTrainer.{role}_init", f"give the {role} the teacher's architecture") from None

    def _initialise_from_run(self, source: str) -> None:
        """Load the EMA generator of an earlier run (folder or checkpoint file) into the generator."""
        where = "DistillationTrainer.generator_checkpoint"
        source = Path(source)
        if source.is_dir():
            found = latest_good(source / "checkpoints", map_location=self.device)
            if found is None:
                raise UserError(f"the run folder {source} has no usable checkpoint", where,
                                "point it at a run that reached its first checkpoint")
            state = found[1]
        elif source.is_file():
            state = load_checkpoint(source, map_location=self.device)
        else:
            raise UserError(f"{source} is neither a run folder nor a checkpoint file", where,
                            "give the folder of the first stage's run, e.g. runs/realuid_fm_gmm-...")
        weights = {k.removeprefix("model."): v for k, v in state["ema"].items() if k.startswith("model.")}
        try:
            self.generator.load_state_dict(weights)
        except RuntimeError as err:
            raise UserError(f"the checkpoint's generator does not fit this recipe's ({str(err).splitlines()[0]})",
                            where, "use the first stage's generator architecture") from None

    def _fake_side_parameters(self) -> list[nn.Parameter]:
        return list(self.fake.parameters()) + list(self.objective_modules.parameters())

    def _check_shapes(self) -> None:
        """One dry forward of every model on zeros: a shape mismatch names both shapes."""
        n = 2
        x = torch.zeros(n, *self.shape, device=self.device, dtype=self.dtype)
        t = torch.full((n,), 0.5 * (getattr(self.path, "t_min", 0.0) + getattr(self.path, "t_max", 1.0)),
                       device=self.device, dtype=self.dtype)
        cond = torch.zeros(n, dtype=torch.long, device=self.device) if self.data.num_classes else None
        if self.path.x1_is_condition:
            cond = x
        with torch.no_grad(), default_dtype(self.dtype):
            for name, fn in (("generator", lambda: self.generator(x, cond)),
                             ("teacher", lambda: self.teacher(x, t, cond)),
                             ("fake model", lambda: self.fake(x, t, cond))):
                try:
                    out = fn()
                except (RuntimeError, ValueError, IndexError) as err:
                    raise UserError(f"the {name} cannot take data of shape {self.shape} "
                                    f"({str(err).splitlines()[0][:200]})", f"DistillationTrainer.{name.split()[0]}",
                                    "make the network's dimension match the data (e.g. MLP.dim)") from None
                if tuple(out.shape[1:]) != self.shape:
                    raise UserError(f"the {name} outputs samples of shape {tuple(out.shape[1:])} but the data has "
                                    f"shape {self.shape}", f"DistillationTrainer.{name.split()[0]}",
                                    "make the network's dimension match the data (e.g. MLP.dim)")

    # -- one batch -----------------------------------------------------------------------------
    @_in_run_dtype
    def draw(self, with_grad: bool) -> tuple[PathSample, PathSample | None]:
        """A generated path sample (and a real one sharing x1 and t, paper Algorithm 1)."""
        n = self.local_batch_size
        wants_real = self.objective.uses_real_data or self.coupling.needs_data or self.data.num_classes > 0
        real = self.data.next_batch(n, self.device) if wants_real else None
        if real is not None:
            real.x = real.x.to(self.dtype)
        coupled = self.coupling.sample(real, n, self.shape, self.rng, self.device)
        z = torch.randn(n, *self.shape, generator=self.rng, device=self.device)
        t = self.path.sample_t(n, self.rng, self.device)
        noise = torch.randn(n, *self.shape, generator=self.rng, device=self.device) \
            if self.path.needs_extra_noise else None
        with torch.set_grad_enabled(with_grad):
            x0 = self.generator(z, coupled.cond)
        gen = self.path.interpolate(x0, coupled.x1, t, noise, coupled.cond)
        real_sample = None
        if self.objective.uses_real_data:
            real_sample = self.path.interpolate(real.x, coupled.x1, t, noise, coupled.cond)
        return gen, real_sample

    def _update(self, loss, params, optimizer, where: str) -> bool:
        return self.apply_update(loss, list(params), optimizer, where, self.grad_clip)

    def fake_step(self) -> dict:
        with self.autocast():
            gen, real = self.draw(with_grad=False)
            loss, logs = self.objective.fake_loss(self.fields, gen, real)
        self._update(loss, self._fake_side_parameters(), self.opt_fake, "fake-model")
        return {"fake_loss": loss.detach(), **logs}

    def generator_step(self) -> dict:
        self.fake.requires_grad_(False)
        try:
            with self.autocast():
                gen, _ = self.draw(with_grad=True)
                loss, logs = self.objective.generator_loss(self.fields, gen)
            if self._update(loss, list(self.generator.parameters()), self.opt_generator, "generator"):
                self.ema.update(self.generator)
        finally:
            self.fake.requires_grad_(True)
        return {"generator_loss": loss.detach(), **logs}

    @_in_run_dtype
    def train_step(self) -> dict:
        """K fake-model updates, one generator update, schedules stepped."""
        logs: dict = {}
        for _ in range(self.fake_steps):
            logs.update(self.fake_step())
        logs.update(self.generator_step())
        with warnings.catch_warnings():  # torch warns when the first update was skipped (non-finite)
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.sched_fake.step()
            self.sched_generator.step()
        self.step += 1
        return logs

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    @_in_run_dtype
    def sample(self, n: int, seed: int | None = None, use_ema: bool = True) -> torch.Tensor:
        """n samples of the (EMA) generator from fixed noise; class labels cycle 0..C-1.

        Conditions drawn from data (a bridge's corrupted inputs) come from the
        data source restarted at a fixed seed; its training position is restored after.
        """
        model = self.ema.model if use_ema else self.generator
        if use_ema:
            model.eval()   # the EMA copy is never trained: no dropout when it samples
        seed = self.seed + 10_000 if seed is None else seed
        rng = torch.Generator(self.device).manual_seed(seed)
        needs_real = self.coupling.needs_data
        if needs_real:
            position = self.data.state_dict()
            self.data.seed(seed)
        out = []
        try:
            for start in range(0, n, 4 * self.batch_size):
                m = min(4 * self.batch_size, n - start)
                z = torch.randn(m, *self.shape, generator=rng, device=self.device, dtype=self.dtype)
                real = self.data.next_batch(m, self.device) if needs_real else None
                cond = self.coupling.sample(real, m, self.shape, rng, self.device).cond
                if self.data.num_classes and not needs_real:
                    cond = torch.arange(start, start + m, device=self.device) % self.data.num_classes
                with self.autocast():
                    out.append(model(z, cond).to(self.dtype))
        finally:
            if needs_real:
                self.data.load_state_dict(position)
        return torch.cat(out)

    def learning_rates(self) -> dict:
        return {"lr_generator": self.sched_generator.get_last_lr()[0]}

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "step": self.step, "wall_time": self.wall_time,
            "generator": self.generator.state_dict(), "fake": self.fake.state_dict(), "ema": self.ema.state_dict(),
            "objective": self.objective_modules.state_dict(),
            "opt_generator": self.opt_generator.state_dict(), "opt_fake": self.opt_fake.state_dict(),
            "sched_generator": self.sched_generator.state_dict(), "sched_fake": self.sched_fake.state_dict(),
            "rng": self.rng.get_state(), "torch_rng": torch.get_rng_state(), "data": self.data.state_dict(),
            "guard": self.guard.state_dict(), "running": self.running_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step, self.wall_time = int(state["step"]), float(state["wall_time"])
        self.generator.load_state_dict(state["generator"])
        self.fake.load_state_dict(state["fake"])
        self.ema.load_state_dict(state["ema"])
        self.objective_modules.load_state_dict(state["objective"])
        self.opt_generator.load_state_dict(state["opt_generator"])
        self.opt_fake.load_state_dict(state["opt_fake"])
        self.sched_generator.load_state_dict(state["sched_generator"])
        self.sched_fake.load_state_dict(state["sched_fake"])
        self.rng.set_state(state["rng"].cpu() if self.device.type == "cpu" else state["rng"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.data.load_state_dict(state["data"])
        self.guard.load_state_dict(state["guard"])
        self.running = defaultdict(lambda: [0.0, 0], {k: list(v) for k, v in state["running"].items()})

    @staticmethod
    def _status(logs: dict, row: dict | None) -> str:
        parts = [f"fake {float(logs['fake_loss']):.3g}", f"gen {float(logs['generator_loss']):.3g}"]
        if "uid_gap" in logs:
            parts.append(f"gap {float(logs['uid_gap']):.3g}")
        if row is not None and "sw" in row:
            parts.append(f"sw {row['sw']:.3f}")
        if row is not None and "fd_classifier" in row:
            parts.append(f"fd {row['fd_classifier']:.2f}")
        return " ".join(parts)

    def write_artifacts(self) -> None:
        """Final samples: ``samples.npy`` (vector data) and a PNG of the samples."""
        samples = self.last_samples if self.last_samples is not None else self.sample(self.eval_samples)
        if self.data.is_image:
            image_grid_png(samples[:64], self.out_dir / "samples.png")
            return
        buffer = _npy_bytes(samples.detach().cpu().numpy())
        atomic_write_bytes(self.out_dir / "samples.npy", buffer)
        if self.shape == (2,):
            log_density = getattr(self.data, "log_prob", None)
            scatter_png(samples, self.out_dir / "samples.png", log_density)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()

