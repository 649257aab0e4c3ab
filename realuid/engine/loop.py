"""The one training loop: configuration, random streams, the guarded update, reporting, checkpoints, artifacts.

A :class:`TrainingLoop` is built around a :class:`~realuid.engine.trainer.Trainer`
(distillation, teacher training), which supplies its models and one
``train_step``; the loop does everything else and reads top to bottom::

    trainer.setup(loop)                            # models on the device, tracked for checkpoints
    while step < steps:
        logs = trainer.train_step()                # one optimisation step (K fake + 1 generator, ...)
        step the tracked lr schedules; step += 1
        every eval_every:        evaluate()         # one row of metrics.jsonl (+ TensorBoard, sample grid)
        every checkpoint_every:  save()             # atomic, checksummed, resumable
        on SIGINT/SIGTERM or time_limit: checkpoint and stop
    write_artifacts()                              # samples.png (+ samples.npy for vector data)

Randomness comes from three streams, each saved in checkpoints so that a
resumed run continues bit for bit: the training generator :attr:`TrainingLoop.rng`
(noise, times, couplings), the data source's own generator, and the global
torch RNG (dropout). Under data parallelism every rank runs the same streams
and keeps its slice of each global batch, reading only its rows of the real data
(:mod:`realuid.engine.distributed`),
so a checkpoint resumes on any number of processes.

Machinery switched by bindings of ``TrainingLoop``:

- ``precision``: ``'fp32'`` or ``'bf16'`` (``torch.autocast`` around forward passes
  and losses; weights, optimiser states and the EMA stay in float32);
- TF32 matmuls and convolutions on CUDA (always on there);
- ``channels_last`` memory format for image networks;
- ``compile``: ``nn.Module.compile()`` of the networks (state-dict keys unchanged);
- ``tensorboard``: scalars under ``RUN/tensorboard`` (skipped, with one warning,
  when the tensorboard package is missing);
- ``parallel``: data parallelism under ``torchrun --nproc_per_node N -m realuid run RECIPE``,
  DDP or FSDP2 (:class:`~realuid.engine.distributed.Distributed`).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from realuid.checkpoints import first_mismatch, latest_good, save_checkpoint
from realuid.components import register
from realuid.devices import (COMPILE_MODES, CUDA_GRAPH_MODES, DTYPES, autocast, check_precision, default_dtype,
                             enable_tf32, resolve_device)
from realuid.engine.distributed import PARALLEL_MODES, Distributed
from realuid.engine.guard import NonFiniteGuard, TrainingDiverged
from realuid.engine.reporting import MetricsLog
from realuid.engine.signals import RunInterrupted, StopSignals
from realuid.errors import MAX_SEED, MAX_STEPS, UserError, check, check_count, check_range, warn
from realuid.io import atomic_write_bytes, npy_bytes, remove_stale_temporaries

#: metrics shown on the progress bar when a row has them: (key, label, format)
PROGRESS_METRICS = (("sw", "sw", ".3f"), ("fd_classifier", "fd", ".2f"))


@register("loop")
class TrainingLoop:
    """The training loop every trainer runs on: steps, intervals, device, precision, checkpoints, reporting.

    Args:
        trainer: what is trained (``experiment.trainer``): supplies models and ``train_step``.
        out_dir: the run folder. seed: seed of every random stream (``realuid run --seed``).
        steps: optimisation steps (a distillation step is K fake-model updates + 1 generator update).
        batch_size: the global batch; under data parallelism each of N ranks draws ``batch_size / N``.
        eval_every, eval_samples: an evaluation (metrics.jsonl row, sample grid) every so many steps,
            on so many fixed-noise samples of the EMA model.
        checkpoint_every, keep_checkpoints: a checkpoint every so many steps; the newest kept.
        max_bad_steps: stop after this many non-finite updates in a row (exit 3).
        device: ``'auto'``, ``'cpu'`` or ``'cuda[:i]'``. dtype: ``'float32'`` or ``'float64'``.
        precision: ``'fp32'`` or ``'bf16'`` (autocast of forward passes and losses).
        channels_last: store image networks' convolution weights channels-last (NHWC). Off by
            default: no faster for the CIFAR U-Net (H100 and H200, docs/RESULTS.md).
        compile: ``torch.compile`` the networks: False, True (each network whole) or ``'regional'``
            (each block the network lists in ``compile_regions()``: faster to compile).
        compile_mode: torch.compile's mode: ``'default'``, ``'max-autotune-no-cudagraphs'``,
            ``'reduce-overhead'`` (CUDA graphs; each update starts a new replay generation,
            :meth:`begin_update`) or ``'max-autotune'``. On one H200, ``'reduce-overhead'`` took the
            CIFAR RealUID cycle 593 -> 550 ms and the teacher step 53 -> 29 ms (docs/RESULTS.md).
        tensorboard: also write the metrics as TensorBoard scalars under ``RUN/tensorboard``.
        time_limit: stop (final evaluation and checkpoint) once training has taken this many
            seconds (summed over resumes); 0: no limit.
        progress: show the progress bar.
        check_replicas: under data parallelism, compare the ranks' weights at every checkpoint
            (a debugging aid: they must stay identical).
        parallel: under ``torchrun``, ``'ddp'`` (every rank holds every weight, DDP averages the
            gradients) or ``'fsdp'`` (FSDP2 shards every network's weights, gradients and Adam moments
            over the ranks: for models that do not fit three times on one GPU). Checkpoints hold whole
            tensors either way and resume under either mode on any number of processes.
    """

    def __init__(self, trainer, out_dir: str | Path, seed: int = 0, steps: int = 2000, batch_size: int = 512,
                 eval_every: int = 500, eval_samples: int = 5000, checkpoint_every: int = 1000,
                 keep_checkpoints: int = 2, max_bad_steps: int = 20, device: str = "auto", dtype: str = "float32",
                 precision: str = "fp32", channels_last: bool = False, compile: bool | str = False,
                 compile_mode: str = "default", tensorboard: bool = True, time_limit: float = 0.0,
                 progress: bool = True, check_replicas: bool = False, parallel: str = "ddp"):
        where = "TrainingLoop"
        self.seed = check_count(seed, f"{where}.seed (realuid run --seed)", 0, MAX_SEED)
        self.steps = check_count(steps, f"{where}.steps", 1, MAX_STEPS)
        self.batch_size = check_count(batch_size, f"{where}.batch_size")
        self.eval_every = check_count(eval_every, f"{where}.eval_every", 1, MAX_STEPS)
        self.eval_samples = check_count(eval_samples, f"{where}.eval_samples")
        self.checkpoint_every = check_count(checkpoint_every, f"{where}.checkpoint_every", 1, MAX_STEPS)
        self.keep_checkpoints = check_count(keep_checkpoints, f"{where}.keep_checkpoints", 1, 10_000)
        max_bad_steps = check_count(max_bad_steps, f"{where}.max_bad_steps", 1, MAX_STEPS)
        check(dtype in DTYPES, f"unknown dtype {dtype!r}", f"{where}.dtype", f"use one of {list(DTYPES)}")
        self.dtype = DTYPES[dtype]
        check_precision(precision, self.dtype, where)
        check_range(time_limit, f"{where}.time_limit", 0.0, where=f"{where}.time_limit (0: no limit)")
        check(compile in (False, True, "regional"), f"{where}.compile = {compile!r} is not False, True or 'regional'",
              f"{where}.compile", f"bind {where}.compile = False, True or 'regional'")
        check(compile_mode in COMPILE_MODES, f"{where}.compile_mode = {compile_mode!r} is not a torch.compile mode",
              f"{where}.compile_mode", f"bind it to one of {', '.join(repr(m) for m in COMPILE_MODES)}")
        check(parallel in PARALLEL_MODES, f"{where}.parallel = {parallel!r} is not 'ddp' or 'fsdp'",
              f"{where}.parallel", f"bind {where}.parallel = 'ddp' or 'fsdp'")
        check(not (parallel == "fsdp" and compile), f"{where}.compile = {compile!r} with {where}.parallel = 'fsdp' "
              "is not supported yet (FSDP's hooks inside compiled graphs are untested here)", f"{where}.compile",
              f"bind {where}.compile = False, or {where}.parallel = 'ddp'")
        for name, flag in (("channels_last", channels_last), ("tensorboard", tensorboard), ("progress", progress),
                           ("check_replicas", check_replicas)):
            check(isinstance(flag, bool), f"{where}.{name} must be True or False, got {flag!r}",
                  f"{where}.{name}", f"bind {where}.{name} = True or False")

        self.out_dir = Path(out_dir)
        self.precision, self.channels_last = precision, channels_last
        self.compile, self.compile_mode = compile, compile_mode
        self.use_tensorboard, self.time_limit, self.show_progress = tensorboard, float(time_limit), progress
        self.check_replicas = check_replicas
        self.dist = Distributed(parallel, precision)
        self.device = self.dist.init(resolve_device(device, f"{where}.device"))
        enable_tf32(self.device)
        # these modes replay CUDA graphs (on CUDA only): a graph's outputs live in its memory pool until the next update
        self.cuda_graphs = bool(compile) and compile_mode in CUDA_GRAPH_MODES and self.device.type == "cuda"
        self.local_batch_size = self.dist.local_batch(self.batch_size, where)
        self.guard = NonFiniteGuard(max_bad_steps)
        self.log = MetricsLog(self.out_dir / "metrics.jsonl")
        self.step, self.wall_time = 0, 0.0
        self.running: dict[str, list] = defaultdict(lambda: [0.0, 0])
        self.last_samples: torch.Tensor | None = None
        self._tracked: dict[str, object] = {}
        self._lr_schedules: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self._tensorboard = None

        self.trainer = trainer
        with default_dtype(self.dtype):
            trainer.setup(self)
        self.data = trainer.data
        self.data.seed(self.seed + 1)
        self.rng = torch.Generator(self.device).manual_seed(self.seed + 2)
        self.dist.check_agreement(_config_text(), _code_version())

    # -- what a trainer calls during setup and its steps ----------------------------------------------------------
    def track(self, **parts) -> None:
        """Save and restore these objects (modules, optimisers, EMA) in every checkpoint, under their names."""
        for name, part in parts.items():
            check(name not in self._tracked, f"two parts of the checkpoint are called {name!r}", "the trainer")
            self._tracked[name] = part

    def track_lr(self, **schedules) -> None:
        """Step these lr schedules after every step, log their learning rates under these names, checkpoint them."""
        self._lr_schedules.update(schedules)

    def autocast(self):
        """The precision context for forward passes and losses (bf16 autocast or nothing)."""
        return autocast(self.device, self.precision)

    def prepare(self, *modules: nn.Module | None) -> None:
        """Channels-last and ``torch.compile`` of these networks, as the loop's options say (images only)."""
        from realuid.devices import compile_networks, to_channels_last

        if self.channels_last and self.trainer.data.is_image:
            to_channels_last(*modules)
        if self.compile:
            compile_networks(*modules, regional=self.compile == "regional", mode=self.compile_mode)

    def begin_update(self) -> None:
        """Start one update (a fake-model, generator or teacher step): under CUDA graphs, a new replay generation.

        ``torch.compile``'s CUDA-graph modes reuse each graph's output memory once a
        new generation starts; marking it at every update (rather than leaving it
        to torch's guess) makes the boundary the engine's, so a tensor kept from
        an earlier update is an error when read, never silently overwritten.
        """
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def owned(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in memory of its own: a copy under CUDA graphs (where a graph's output is reused), else ``x``."""
        return x.clone() if self.cuda_graphs else x

    def apply_update(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, role: str,
                     grad_clip: float) -> bool:
        """Backward, clip the optimiser's parameters' gradients, and step unless the loss or gradient is non-finite.

        Under data parallelism the gradients are averaged over ranks by the DDP or
        FSDP hooks during the backward (the gradient norm of sharded weights is
        computed over all shards): a non-finite gradient on one rank is
        non-finite on all, so every rank takes the same decision. The clipped
        parameters are the optimiser's own: under FSDP those are the shards.
        """
        params = [p for group in optimizer.param_groups for p in group["params"]]
        optimizer.zero_grad(set_to_none=True)
        # No check before backward (it would stall the host on the forward): a non-finite loss makes a
        # non-finite gradient norm, and the one check below skips the update, on every rank alike.
        loss.backward()
        limit = grad_clip if grad_clip > 0 else float("inf")
        grad_norm = self.dist.whole(torch.nn.utils.clip_grad_norm_(params, limit))
        if not self.guard.ok(loss, grad_norm, role, self.step + 1):
            optimizer.zero_grad(set_to_none=True)
            return False
        optimizer.step()
        self.dist.reshard()
        return True

    # -- running means ----------------------------------------------------------------------------------------------
    def accumulate(self, logs: dict) -> None:
        """Add a step's numbers to the running means written at the next evaluation.

        Tensors are summed where they live, so a step costs no host sync; the
        sums are read at the next report. Non-finite values (a skipped update,
        counted in ``bad_steps``) are left out of the means.
        """
        for key, value in logs.items():
            acc = self.running[key]
            if isinstance(value, torch.Tensor):
                value = value.detach().double()
                finite = torch.isfinite(value)
                acc[0] = acc[0] + torch.where(finite, value, 0.0)
                acc[1] = acc[1] + finite.long()
            elif math.isfinite(value):
                acc[0] += value
                acc[1] += 1

    def running_state(self) -> dict[str, list]:
        """The running sums and counts as plain numbers (for checkpoints)."""
        return {k: [float(s), int(c)] for k, (s, c) in self.running.items()}

    def running_means(self) -> dict:
        """The means since the last report, over every rank's numbers."""
        state = self.running_state()
        if not self.dist.enabled:
            return {k: s / max(c, 1) for k, (s, c) in state.items()}
        keys = sorted(state)   # every rank logs the same keys
        sums = self.dist.mean(torch.tensor([state[k][0] for k in keys], dtype=torch.float64, device=self.device))
        counts = self.dist.mean(torch.tensor([float(state[k][1]) for k in keys], dtype=torch.float64,
                                             device=self.device))
        return {k: s / c if c > 0 else 0.0 for k, s, c in zip(keys, sums.tolist(), counts.tolist())}

    # -- reporting --------------------------------------------------------------------------------------------------
    def learning_rates(self) -> dict:
        return {name: schedule.get_last_lr()[0] for name, schedule in self._lr_schedules.items()}

    def evaluate(self) -> dict:
        """One row of metrics.jsonl: running means, learning rates, bad steps, and the metrics of
        fixed-noise EMA samples (sampled on every rank, gathered, measured on rank 0)."""
        row = {"step": self.step, "wall_time": round(self.wall_time, 3)}
        row.update(self.running_means())
        row.update({**self.learning_rates(), "bad_steps": self.guard.total})
        samples = self.trainer.sample(self.eval_samples)
        self.last_samples = samples
        if self.dist.is_main:
            if self.data.is_image:
                self.save_sample_grid(samples)
            for metric in self.trainer.metrics:
                row.update(metric(samples))
        self.report(row)
        return row

    def report(self, row: dict) -> None:
        """Append a row to metrics.jsonl and its numbers to TensorBoard (rank 0 only); resets the running means."""
        if self.device.type == "cuda":
            row.setdefault("peak_memory_gib", round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3))
        self.running.clear()
        if not self.dist.is_main:
            return
        self.log.append(row)
        writer = self.tensorboard_writer()
        if writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    writer.add_scalar(key, value, row["step"])
            writer.flush()

    def tensorboard_writer(self):
        """A SummaryWriter on RUN/tensorboard, or None (switched off, or tensorboard not installed: one warning)."""
        if not self.use_tensorboard:
            return None
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warn("tensorboard is not installed, so TensorBoard logging is skipped (metrics.jsonl has every "
                     "number); pip install tensorboard to get it")
                self.use_tensorboard = False
                return None
            self._tensorboard = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.step + 1)
        return self._tensorboard

    def close_reporting(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def status(self, logs: dict, row: dict | None) -> str:
        """The progress bar's text: the trainer's losses, then the last evaluation's headline metrics."""
        parts = [f"{label} {float(logs[key]):.4g}" for key, label in self.trainer.progress_fields if key in logs]
        for key, label, fmt in PROGRESS_METRICS:
            if row is not None and key in row:
                parts.append(f"{label} {row[key]:{fmt}}")
        return " ".join(parts)

    def save_sample_grid(self, samples: torch.Tensor) -> None:
        """The fixed-noise samples of this evaluation as ``RUN/samples/step_XXXXXXXX.png`` (image data, rank 0)."""
        from realuid.pictures import image_grid_png

        if not self.dist.is_main or samples.ndim != 4:
            return
        folder = self.out_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        image_grid_png(samples[:64], folder / f"step_{self.step:08d}.png")

    def write_artifacts(self) -> None:
        """The final samples: a PNG grid (images), or ``samples.npy`` and, in 2-D, a scatter plot (vectors)."""
        from realuid.pictures import image_grid_png, scatter_png

        samples = self.last_samples if self.last_samples is not None else self.trainer.sample(self.eval_samples)
        if not self.dist.is_main:   # every rank takes part in sampling; rank 0 alone writes
            return
        if self.data.is_image:
            image_grid_png(samples[:64], self.out_dir / "samples.png")
            return
        atomic_write_bytes(self.out_dir / "samples.npy", npy_bytes(samples.detach().cpu().numpy()))
        if tuple(self.data.shape) == (2,):
            scatter_png(samples, self.out_dir / "samples.png", getattr(self.data, "log_prob", None))

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def rank_streams(self) -> dict:
        """This rank's random streams (data position, training generator, torch and CUDA RNG)."""
        state = {"rng": self.rng.get_state(), "torch_rng": torch.get_rng_state(), "data": self.data.state_dict()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_rank_streams(self, state: dict) -> None:
        self.rng.set_state(state["rng"].cpu() if self.device.type == "cpu" else state["rng"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        self.data.load_state_dict(state["data"])

    def state_dict(self) -> dict:
        """Everything a resumed run needs: counters, guard, running means, streams and every tracked part."""
        state = {"step": self.step, "wall_time": self.wall_time, "guard": self.guard.state_dict(),
                 "running": self.running_state(), **self.rank_streams()}
        # Under FSDP the weights and moments are sharded: gathered, a checkpoint is that of one process.
        state.update({name: self.dist.full_state(part.state_dict())
                      for name, part in {**self._tracked, **self._lr_schedules}.items()})
        return state

    def load_state_dict(self, state: dict, where: str = "--resume") -> None:
        """Restore a checkpoint; a part that does not fit this run's config is a UserError naming both shapes."""
        missing = [name for name in ("step", "guard", "running", *self._tracked, *self._lr_schedules)
                   if name not in state]
        if missing:
            raise UserError(f"the checkpoint lacks {', '.join(missing)}: it was written by another trainer "
                            f"({(state.get('meta') or {}).get('trainer', 'unknown')}) or another version",
                            where, "resume a run folder written by this recipe, or start afresh with --overwrite")
        for name, part in {**self._tracked, **self._lr_schedules}.items():
            if isinstance(part, nn.Module):
                check_fits(part, state[name], f"the checkpoint's {name}", where)
            try:
                self.dist.load_part(part, state[name])
            except (RuntimeError, ValueError, KeyError) as err:
                raise UserError(f"the checkpoint's {name} does not fit this run's config "
                                f"({str(err).splitlines()[0][:200]})", where,
                                "resume with the config the run started with (its config.gin), or start afresh "
                                "with --overwrite") from None
        self.step, self.wall_time = int(state["step"]), float(state["wall_time"])
        self.guard.load_state_dict(state["guard"])
        self.running = defaultdict(lambda: [0.0, 0], {k: list(v) for k, v in state["running"].items()})
        self.load_rank_streams(state)

    def checkpoint_meta(self) -> dict:
        """What a checkpoint says about itself: trainer, kind, shapes, and the run's operative config."""
        import gin

        config = self.out_dir / "config.gin"
        return {"trainer": self.trainer.name, "kind": self.trainer.kind,
                "config": config.read_text() if config.is_file() else gin.operative_config_str(),
                **self.trainer.describe(), "world_size": self.dist.world_size}

    def save(self) -> Path | None:
        """Write a checkpoint of the current state (rank 0); refuses (TrainingDiverged) if any weight is NaN/Inf."""
        state = self.state_dict()
        weights = [name for name, part in self._tracked.items() if isinstance(part, nn.Module)]
        if self.dist.enabled and self.check_replicas:
            self.dist.check_replicas({name: state[name] for name in weights}, self.step)
        if not self.dist.is_main:
            return None
        for part in weights:
            for name, tensor in state[part].items():
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise TrainingDiverged(f"the {part} weight {name} holds NaN/Inf at step {self.step}; no "
                                           "checkpoint was written, so the last good one is kept",
                                           "training", "lower the learning rate or raise grad_clip, then "
                                           "continue from the last checkpoint with --resume")
        state["meta"] = self.checkpoint_meta()
        return save_checkpoint(self.out_dir / "checkpoints", self.step, state, self.keep_checkpoints)

    def resume(self) -> None:
        """Load the newest good checkpoint (falling back past bad ones) and cut the log back to its step."""
        folder = self.out_dir / "checkpoints"
        if self.dist.is_main:
            remove_stale_temporaries(folder)
            remove_stale_temporaries(self.out_dir)
        self.dist.barrier()
        found = latest_good(folder, map_location=self.device)
        if found is None:
            raise UserError(f"no usable checkpoint in {folder}", "--resume",
                            "resume a run folder that has reached its first checkpoint, or start it afresh "
                            "with --overwrite")
        path, state = found
        self.load_state_dict(state, f"--resume {self.out_dir} ({path.name})")
        if self.dist.is_main:
            self.log.truncate_after(self.step)

    # -- the loop ---------------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict | None:
        """Train until ``steps`` (or ``time_limit`` seconds, or a signal), evaluating and checkpointing on the way."""
        from realuid.engine.reporting import progress_bar

        if resume:
            self.resume()
        last_row = None
        show = self.show_progress and self.dist.is_main
        bar = progress_bar() if show else contextlib.nullcontext()
        stop = StopSignals()
        try:
            with stop, bar, default_dtype(self.dtype):
                task = bar.add_task(self.trainer.label, total=self.steps, completed=self.step, rate="", status="") \
                    if show else None
                tick = time.perf_counter()
                while self.step < self.steps:
                    logs = self.trainer.train_step()
                    with warnings.catch_warnings():  # torch warns when the first update was skipped (non-finite)
                        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                        for schedule in self._lr_schedules.values():
                            schedule.step()
                    self.step += 1
                    self.accumulate(logs)
                    now = time.perf_counter()
                    self.wall_time += now - tick
                    tick = now
                    out_of_time = self.time_limit > 0 and self.wall_time >= self.time_limit
                    if self.dist.enabled:  # every rank must take the same decisions
                        out_of_time = self.dist.any(out_of_time, self.device)
                    last = self.step == self.steps or out_of_time
                    if self.step % self.eval_every == 0 or last:
                        last_row = self.evaluate()
                        tick = time.perf_counter()
                    saved, did_save = None, False
                    if self.step % self.checkpoint_every == 0 or last:
                        saved, did_save = self.save(), True
                        tick = time.perf_counter()
                    signalled = stop.signum is not None
                    if self.dist.enabled:
                        signalled = self.dist.any(signalled, self.device)
                    if signalled:  # SIGINT/SIGTERM: checkpoint, then stop (realuid.engine.signals)
                        if not did_save:   # every rank saves together (it gathers their streams)
                            saved = self.save()
                        raise RunInterrupted(stop.signum or signal.SIGTERM, self.step, saved)
                    if task is not None:
                        bar.update(task, completed=self.step,
                                   rate=f"{self.step / max(self.wall_time, 1e-9):.1f} it/s",
                                   status=self.status(logs, last_row))
                    if out_of_time:
                        if self.dist.is_main:
                            warn(f"time limit of {self.time_limit:g} s reached at step {self.step} of {self.steps}; "
                                 "the final checkpoint is written (continue with --resume and a larger time_limit)")
                        break
                self.guard.check_some_applied()
                self.write_artifacts()
        finally:
            self.close_reporting()
        self.dist.barrier()
        return last_row


def check_fits(module: nn.Module, state: dict, what: str, where: str) -> None:
    """A UserError naming the first tensor of ``state`` whose name or shape differs from ``module``'s."""
    own = module.state_dict()
    found = first_mismatch(own, state)
    if found is None:
        return
    kind, name = found
    fix = "use the architecture the checkpoint was written with"
    if kind == "missing":
        raise UserError(f"{what} has no tensor {name!r} (it has {len(state)} tensors, this run's model "
                        f"{len(own)})", where, fix)
    if kind == "shape":
        raise UserError(f"{what} does not fit: its {name} has shape {tuple(state[name].shape)}, this run's "
                        f"model has {tuple(own[name].shape)}", where, fix)
    raise UserError(f"{what} has tensors this run's model lacks (first: {name!r})", where, fix)


def _config_text() -> str:
    import gin

    return gin.config_str()


def _code_version() -> str:
    """realuid's version and a digest of its source files (ranks of one run must run the same code)."""
    import hashlib

    import realuid

    digest = hashlib.sha256()
    for path in sorted(Path(realuid.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return f"{realuid.__version__}+{digest.hexdigest()[:12]}"
