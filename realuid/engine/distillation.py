"""The inverse-distillation trainer: one step for every objective, path, network and data source.

Each step (DESIGN §2, paper Algorithm 1):

1. ``fake_steps`` times: draw a batch (real ``x0*`` if needed, coupling ``x1``,
   ``z``, ``t``), make ``x0 = G(z)`` without gradients, and minimise the
   objective's fake loss over the fake model f;
2. once: draw a fresh batch with gradients through ``x0 = G(z)`` and minimise
   the objective's generator loss over theta with f frozen;
3. update the generator's EMA.

The :class:`~realuid.engine.loop.TrainingLoop` steps the lr schedules,
evaluates, checkpoints and owns the random streams.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from realuid.checkpoints import latest_good, load_checkpoint
from realuid.components import register
from realuid.context import attach
from realuid.couplings import Coupling
from realuid.data.base import DataSource
from realuid.devices import in_run_dtype
from realuid.engine.ema import EMA
from realuid.engine.optim import adam, check_adam, lr_schedule
from realuid.engine.trainer import Trainer
from realuid.errors import UserError, check, check_count
from realuid.fields import NetworkField
from realuid.metrics.base import Metric
from realuid.models.loading import ema_weights
from realuid.objectives import Fields, Objective
from realuid.paths.base import MatchingPath, PathSample

INITS = ("scratch", "teacher")


@register("trainer")
class DistillationTrainer(Trainer):
    """One-step inverse distillation: K fake-model steps, then one generator step (UID, RealUID, SiD, ...).

    Args:
        data: real data source (also the generator's shape and labels).
        path: the matching path of teacher and fake model.
        teacher: frozen field f* (an ``AnalyticTeacher`` or a trained one).
        generator: the one-step generator.
        fake: backbone of the fake model f, read in ``parameterization``.
        objective: fake and generator losses (``RealUID``, ...).
        coupling: how x1 is drawn (default ``IndependentGaussian``).
        metrics: evaluated on the EMA generator's samples at every evaluation.
        parameterization: the field space the objective works in.
        fake_steps: fake-model updates before each generator update (paper: K = 5).
        lr_generator, lr_fake, betas: Adam settings (paper: betas (0, 0.999)).
        warmup_steps, lr_decay, lr_final: lr schedule (linear warm-up, then constant/cosine/linear decay).
        grad_clip: max gradient norm per update (0 disables).
        ema_decay: EMA of the generator's weights.
        generator_init, fake_init: "scratch" or "teacher" (copy the teacher network's weights).
        generator_checkpoint: a run folder (or checkpoint file) whose EMA generator starts this run:
            a second stage such as RealUID fine-tuning (DESIGN §3).

    Steps, batch size, intervals, device and precision are the loop's
    (``TrainingLoop.*``); under ``torchrun`` the batch is split over the ranks.
    """

    name = "DistillationTrainer"
    kind = "student"
    label = "distilling"
    progress_fields = (("fake_loss", "fake"), ("generator_loss", "gen"), ("uid_gap", "gap"))

    def __init__(self, data: DataSource, path: MatchingPath, teacher: nn.Module, generator: nn.Module,
                 fake: nn.Module, objective: Objective, coupling: Coupling | None = None,
                 metrics: tuple[Metric, ...] = (), parameterization: str = "velocity", fake_steps: int = 5,
                 lr_generator: float = 2e-3, lr_fake: float = 2e-3, betas: tuple[float, float] = (0.0, 0.999),
                 warmup_steps: int = 200, lr_decay: str = "cosine", lr_final: float = 0.05,
                 grad_clip: float = 1.0, ema_decay: float = 0.999, generator_init: str = "scratch",
                 fake_init: str = "scratch", generator_checkpoint: str | None = None):
        where = self.name
        self.fake_steps = check_count(fake_steps, f"{where}.fake_steps", 1, 1000)
        check_adam(where, {"lr_generator": lr_generator, "lr_fake": lr_fake}, betas, warmup_steps, lr_decay,
                   lr_final, grad_clip, ema_decay)
        for name, value in (("generator_init", generator_init), ("fake_init", fake_init)):
            check(value in INITS, f"{where}.{name} = {value!r} is not 'scratch' or 'teacher'", f"{where}.{name}",
                  f"bind {where}.{name} = 'scratch' or 'teacher'")
        super().__init__(data, path, coupling, metrics, parameterization)
        self.teacher = attach(teacher, self.context)
        self.generator = attach(generator, self.context)
        self.fake_network, self.objective = fake, objective
        self.lr_generator, self.lr_fake, self.betas = lr_generator, lr_fake, tuple(betas)
        self.warmup_steps, self.lr_decay, self.lr_final = warmup_steps, lr_decay, lr_final
        self.grad_clip, self.ema_decay = grad_clip, ema_decay
        self.generator_init, self.fake_init, self.generator_checkpoint = generator_init, fake_init, \
            generator_checkpoint

    # -- set-up -------------------------------------------------------------------------------------------------
    def setup(self, loop) -> None:
        self.loop, device, dtype = loop, loop.device, loop.dtype
        self.teacher = self.teacher.to(device, dtype).requires_grad_(False).eval()
        self.generator = self.generator.to(device, dtype)
        self.fake = NetworkField(self.fake_network, self.path, self.parameterization).to(device, dtype)
        self._initialise_from_teacher()
        if self.generator_checkpoint is not None:
            self._initialise_from_run(self.generator_checkpoint)
        self.fields = Fields(self.teacher, self.fake, self.path, self.parameterization)
        self._check_shapes()
        self.fake_loss = FakeModelLoss(self.fake, self.objective, self.fields).to(device, dtype)
        self.objective_modules = self.fake_loss.heads
        # the objective's heads too: a GAN head on the fake U-Net's encoder runs that encoder in its own forward,
        # which would otherwise stay eager beside the compiled networks (UID + GAN ran at half speed)
        loop.prepare(self.generator.network, self.fake.network, getattr(self.teacher, "network", None),
                     *self.objective_modules)
        self.ema = EMA(self.generator, self.ema_decay)   # before sharding: an FSDP module cannot be copied
        # Under FSDP every module called on its own is a sharded unit; under DDP the updates go through
        # DDP-wrapped modules (gradients averaged over ranks) and frozen uses call the plain ones.
        loop.dist.shard_networks(self.generator, self.fake, *self.objective_modules, self.teacher, self.ema.model)
        self.fake_loss_update = loop.dist.wrap(self.fake_loss)
        self.generator_update = loop.dist.wrap(self.generator)

        self.opt_generator = adam(self.generator.parameters(), self.lr_generator, self.betas, device)
        self.opt_fake = adam(self._fake_side_parameters(), self.lr_fake, self.betas, device)
        loop.track(generator=self.generator, fake=self.fake, ema=self.ema, objective=self.objective_modules,
                   opt_generator=self.opt_generator, opt_fake=self.opt_fake)
        loop.track_lr(lr_generator=self._schedule(self.opt_generator), lr_fake=self._schedule(self.opt_fake))

    def _schedule(self, optimizer):
        return lr_schedule(optimizer, self.loop.steps, self.warmup_steps, self.lr_decay, self.lr_final)

    def _initialise_from_teacher(self) -> None:
        network = getattr(self.teacher, "network", None)
        for role, init, target in (("generator", self.generator_init, self.generator.network),
                                   ("fake", self.fake_init, self.fake.network)):
            if init != "teacher":
                continue
            if not isinstance(network, nn.Module):
                raise UserError(f"{type(self.teacher).__name__} has no network to copy into the {role}",
                                f"{self.name}.{role}_init", f"bind {self.name}.{role}_init = 'scratch'")
            try:
                target.load_state_dict(network.state_dict())
            except RuntimeError as err:
                raise UserError(f"the teacher's network does not fit the {role}'s ({str(err).splitlines()[0]})",
                                f"{self.name}.{role}_init", f"give the {role} the teacher's architecture") from None

    def _initialise_from_run(self, source: str) -> None:
        """Load the EMA generator of an earlier run (folder or checkpoint file) into the generator."""
        where = f"{self.name}.generator_checkpoint"
        source = Path(source)
        if source.is_dir():
            found = latest_good(source / "checkpoints", map_location=self.loop.device)
            if found is None:
                raise UserError(f"the run folder {source} has no usable checkpoint", where,
                                "point it at a run that reached its first checkpoint")
            state = found[1]
        elif source.is_file():
            state = load_checkpoint(source, map_location=self.loop.device)
        else:
            raise UserError(f"{source} is neither a run folder nor a checkpoint file", where,
                            "give the folder of the first stage's run, e.g. runs/realuid_fm_gmm-...")
        try:
            self.generator.load_state_dict(ema_weights(state))
        except (RuntimeError, KeyError) as err:
            raise UserError(f"the checkpoint's generator does not fit this recipe's ({str(err).splitlines()[0]})",
                            where, "use the first stage's generator architecture") from None

    def _fake_side_parameters(self) -> list[nn.Parameter]:
        return list(self.fake.parameters()) + list(self.objective_modules.parameters())

    def _check_shapes(self) -> None:
        """One dry forward of every model on zeros: a shape mismatch names both shapes."""
        n, device, dtype = 2, self.loop.device, self.loop.dtype
        x = torch.zeros(n, *self.shape, device=device, dtype=dtype)
        t = torch.full((n,), 0.5 * (getattr(self.path, "t_min", 0.0) + getattr(self.path, "t_max", 1.0)),
                       device=device, dtype=dtype)
        cond = torch.zeros(n, dtype=torch.long, device=device) if self.data.num_classes else None
        if self.path.x1_is_condition:
            cond = x
        with torch.no_grad():
            for name, fn in (("generator", lambda: self.generator(x, cond)),
                             ("teacher", lambda: self.teacher(x, t, cond)),
                             ("fake model", lambda: self.fake(x, t, cond))):
                try:
                    out = fn()
                except (RuntimeError, ValueError, IndexError) as err:
                    raise UserError(f"the {name} cannot take data of shape {self.shape} "
                                    f"({str(err).splitlines()[0][:200]})", f"{self.name}.{name.split()[0]}",
                                    "make the network's dimension match the data (e.g. MLP.dim)") from None
                if tuple(out.shape[1:]) != self.shape:
                    raise UserError(f"the {name} outputs samples of shape {tuple(out.shape[1:])} but the data has "
                                    f"shape {self.shape}", f"{self.name}.{name.split()[0]}",
                                    "make the network's dimension match the data (e.g. MLP.dim)")

    # -- one step -----------------------------------------------------------------------------------------------
    @in_run_dtype
    def draw(self, with_grad: bool) -> tuple[PathSample, PathSample | None]:
        """A generated path sample (and a real one sharing x1 and t, paper Algorithm 1).

        The global batch is drawn from the loop's streams and this rank keeps its slice
        (:meth:`~realuid.engine.distributed.Distributed.shard`), reading only its rows of the real
        data (:meth:`~realuid.engine.distributed.Distributed.coupled_rows`); with gradients the
        generator runs through its DDP wrapper.
        """
        loop = self.loop
        n, rng, device, dtype, shard = loop.batch_size, loop.rng, loop.device, loop.dtype, loop.dist.shard
        wants_real = self.objective.uses_real_data or self.coupling.needs_data or self.data.num_classes > 0
        real, coupled = loop.dist.coupled_rows(self.data, self.coupling, n, self.shape, rng, device, dtype,
                                               wants_real)
        x1, cond = coupled.x1, coupled.cond
        z = torch.randn(n, *self.shape, generator=rng, device=device)
        t = self.path.sample_t(n, rng, device)
        noise = torch.randn(n, *self.shape, generator=rng, device=device) if self.path.needs_extra_noise else None
        z, t, noise = (shard(v) for v in (z, t, noise))
        with torch.set_grad_enabled(with_grad):
            x0 = (self.generator_update if with_grad else self.generator)(z, cond)
        gen = self.path.interpolate(x0, x1, t, noise, cond)
        real_sample = None
        if self.objective.uses_real_data:
            real_sample = self.path.interpolate(real.x, x1, t, noise, cond)
        return gen, real_sample

    def fake_step(self) -> dict:
        self.loop.begin_update()
        with self.loop.autocast():
            gen, real = self.draw(with_grad=False)
            loss, logs = self.fake_loss_update(gen, real)
        self.loop.apply_update(loss, self.opt_fake, "fake-model", self.grad_clip)
        return {"fake_loss": loss.detach(), **logs}

    def generator_step(self) -> dict:
        self.loop.begin_update()
        self.fake.requires_grad_(False)
        try:
            with self.loop.autocast():
                gen, _ = self.draw(with_grad=True)
                loss, logs = self.objective.generator_loss(self.fields, gen)
            if self.loop.apply_update(loss, self.opt_generator, "generator", self.grad_clip):
                self.ema.update(self.generator)
        finally:
            self.fake.requires_grad_(True)
        return {"generator_loss": loss.detach(), **logs}

    def train_step(self) -> dict:
        """K fake-model updates, then one generator update."""
        logs: dict = {}
        for _ in range(self.fake_steps):
            logs.update(self.fake_step())
        logs.update(self.generator_step())
        return logs

    # -- sampling -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    @in_run_dtype
    def sample(self, n: int, seed: int | None = None, use_ema: bool = True) -> torch.Tensor:
        """n samples of the (EMA) generator from fixed noise; class labels cycle 0..C-1.

        Conditions drawn from data (a bridge's corrupted inputs) come from the
        data source restarted at a fixed seed; its training position is restored after.
        """
        from realuid.sampling import class_labels

        loop = self.loop
        model = self.ema.model if use_ema else self.generator
        if use_ema:
            model.eval()   # the EMA copy is never trained: no dropout when it samples
        seed = self.sampling_seed(seed)
        rng = torch.Generator(loop.device).manual_seed(seed)
        needs_real = self.coupling.needs_data
        if needs_real:
            position = self.data.state_dict()
            self.data.seed(seed)
        out, chunk = [], 4 * loop.batch_size
        try:
            for start in range(0, n, chunk):
                m = min(chunk, n - start)
                z = torch.randn(m, *self.shape, generator=rng, device=loop.device, dtype=loop.dtype)
                real = self.data.next_batch(m, loop.device) if needs_real else None
                cond = self.coupling.sample(real, m, self.shape, rng, loop.device).cond
                if not needs_real:
                    cond = class_labels(start, m, self.data.num_classes, loop.device)
                mine = loop.dist.rows(m)   # each rank samples its rows of the chunk
                loop.begin_update()   # under CUDA graphs: each chunk one replay, copied out of the graph's memory
                with loop.autocast():
                    x = loop.owned(model(z[mine], None if cond is None else cond[mine]).to(loop.dtype))
                out.append(loop.dist.gather_rows(x, m))
        finally:
            if needs_real:
                self.data.load_state_dict(position)
        return torch.cat(out)


class FakeModelLoss(nn.Module):
    """The fake side of one update as one module: the fake field and the objective's trainable heads.

    ``forward(gen, real) = objective.fake_loss(fields, gen, real)``. Under data
    parallelism this module is what DDP wraps, so one forward covers every use
    of the fake model in the update (the generated and the real batch, a
    discriminator head) and its backward averages exactly their gradients. The
    teacher is held outside the module's parameters: it is never trained.
    """

    def __init__(self, fake: nn.Module, objective: Objective, fields: Fields):
        super().__init__()
        self.fake = fake
        self.heads = nn.ModuleList(objective.trainable_modules())
        self.objective = objective
        self._fields = [fields]   # a list: not a registered submodule (the teacher inside is frozen)

    def forward(self, gen: PathSample, real: PathSample | None):
        return self.objective.fake_loss(self._fields[0], gen, real)
