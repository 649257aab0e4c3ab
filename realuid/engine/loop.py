"""What every trainer shares: device and dtype, precision, data parallelism, the guarded update, the fit loop.

:class:`TrainingLoop` is the base of :class:`~realuid.engine.distillation.DistillationTrainer`
and :class:`~realuid.engine.teacher_training.MatchingTrainer`. A subclass supplies
``train_step()`` (one optimisation step, returning the numbers to log),
``evaluate()``, ``state_dict()`` / ``load_state_dict()`` and
``write_artifacts()``; the base runs the loop that reads top to bottom::

    while step < steps:
        logs = train_step()                         # running means of every logged number
        every eval_every:        evaluate()          # one row of metrics.jsonl (+ TensorBoard, sample grid)
        every checkpoint_every:  save()              # atomic, checksummed, resumable
        on SIGINT/SIGTERM or time_limit: checkpoint and stop

Machinery switched by bindings (both trainers take the same names):

- ``precision``: ``'fp32'`` or ``'bf16'`` (``torch.autocast`` around the forward
  passes and losses; weights, optimiser states and the EMA stay in float32);
- TF32 matmuls and convolutions on CUDA (always on there);
- ``channels_last`` memory format for image networks;
- ``compile``: ``nn.Module.compile()`` of the trained networks (state-dict keys unchanged);
- ``tensorboard``: scalars under ``RUN/tensorboard`` (skipped, with one
  warning, when the tensorboard package is missing);
- data parallelism under ``torchrun --nproc_per_node N -m realuid run RECIPE``
  (:class:`Distributed`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from realuid.checkpoints import latest_good, save_checkpoint

from realuid.io import remove_stale_temporaries

from realuid.errors import warn
from realuid.engine.signals import RunInterrupted, StopSignals
from realuid.devices import (DTYPES, PRECISIONS, autocast, check_precision, default_dtype, enable_tf32,  # noqa: F401
                             in_run_dtype, resolve_device)
from realuid.errors import UserError, check

def to_channels_last(*modules: nn.Module | None) -> None:
    """Store the 4-D weights (convolutions) of each module in channels-last order (NHWC), in place."""
    for module in modules:
        if isinstance(module, nn.Module):
            module.to(memory_format=torch.channels_last)


def compile_networks(*modules: nn.Module | None) -> None:
    """``module.compile()`` in place (``torch.compile`` of its forward; parameter names stay the same).

    Shapes are static: each batch size (B for the generator, 2B for the fake
    model's generated + real batch, the evaluation batch) gets its own graph,
    specialised kernels rather than one symbolic-shape graph.
    """
    # Every U-Net instance (teacher, fake model, generator, their EMA) shares one ``forward`` code object, and
    # each (instance, grad mode, batch size) is a cache entry of it: dynamo's default of 8 entries would
    # silently send the rest back to eager mode.
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 128))
    for module in modules:
        if isinstance(module, nn.Module):
            module.compile(dynamic=False)


def build_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int, decay: str, final: float):
    """LambdaLR of :func:`~realuid.engine.lr_schedules.lr_factor` (linear warm-up, then constant/cosine/linear)."""
    from realuid.engine.lr_schedules import lr_factor

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps, warmup, decay, final))


# -- guards ---------------------------------------------------------------------------------------------------------
class TrainingDiverged(UserError):
    """The run stopped because too many updates in a row were non-finite (CLI exit code 3)."""

    exit_code = 3


class NonFiniteGuard:
    """Skips updates whose loss or gradient is NaN/Inf, warns, counts them; stops after ``limit`` in a row.

    Streaks are counted per role (fake model, generator): K good fake-model
    updates do not hide a generator whose every update is NaN. ``total`` is
    logged as ``bad_steps`` in ``metrics.jsonl``. A skipped update leaves the
    weights, the optimiser state and the EMA untouched, so every checkpoint
    holds finite weights; when a streak reaches ``limit`` the run raises
    :class:`TrainingDiverged` without writing a checkpoint, keeping the last good one.
    """

    def __init__(self, limit: int, owner: str = "DistillationTrainer"):
        self.limit, self.total, self.owner = limit, 0, owner
        self.streaks: dict[str, int] = {}

    @property
    def in_a_row(self) -> int:
        return max(self.streaks.values(), default=0)

    def ok(self, loss: torch.Tensor, grad_norm: torch.Tensor, where: str, step: int | None = None) -> bool:
        both = torch.stack([loss.detach().float().reshape(()), grad_norm.detach().float().reshape(()).to(loss.device)])
        if bool(torch.isfinite(both).all()):   # one host sync per update
            self.streaks[where] = 0
            return True
        self.total += 1
        self.streaks[where] = streak = self.streaks.get(where, 0) + 1
        at = f"step {step}: " if step is not None else ""
        what = f"loss {float(loss.detach())}" if not torch.isfinite(loss) else f"gradient norm {float(grad_norm)}"
        warn(f"{at}non-finite {where} {what}; update skipped ({streak} in a row, {self.total} in all; "
             f"the run stops after {self.limit} in a row)")
        if streak >= self.limit:
            raise TrainingDiverged(f"{streak} {where} updates in a row had a non-finite loss or gradient (last: "
                                   f"{what}{', at ' + at[:-2] if at else ''}); the run stopped and wrote no "
                                   "checkpoint of this state: the last checkpoint written is kept",
                                   f"training ({self.owner}.max_bad_steps = {self.limit})",
                                   "lower the learning rate, raise the warm-up or grad_clip, or "
                                   "check the data and teacher, then continue from the last checkpoint with --resume")
        return False

    def state_dict(self):
        return {"total": self.total, "streaks": dict(self.streaks)}

    def load_state_dict(self, state):
        self.total = int(state["total"])
        streaks = state.get("streaks", {})
        self.streaks = {str(k): int(v) for k, v in streaks.items()}


# -- data parallelism -------------------------------------------------------------------------------------------------
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


# -- the loop -------------------------------------------------------------------------------------------------------
class TrainingLoop:
    """The fit loop, checkpoints and reporting shared by every trainer (module docstring).

    A subclass sets, in its constructor: ``out_dir``, ``steps``, ``eval_every``,
    ``checkpoint_every``, ``keep_checkpoints``, ``show_progress``, ``device``,
    ``dtype``, ``guard``, ``log``, and calls :meth:`setup_machinery`.
    """

    #: shown on the progress bar
    progress_label = "training"
    #: the state-dict parts that hold weights, checked for NaN/Inf before a checkpoint is written
    weight_parts: tuple[str, ...] = ()
    #: the gin name of the trainer, for error messages
    owner = "DistillationTrainer"
    #: what its checkpoints hold: "student" (a one-step generator) or "teacher" (a matching field)
    model_kind = "student"

    def setup_machinery(self, seed: int, device: str, dtype: str, precision: str = "fp32", tensorboard: bool = True,
                        time_limit: float = 0.0) -> None:
        """Device (with data parallelism), dtype, precision, TF32, step counters, TensorBoard and time limit."""
        where = self.owner
        check(dtype in DTYPES, f"unknown dtype {dtype!r}", f"{where}.dtype", f"use one of {list(DTYPES)}")
        self.dtype = DTYPES[dtype]
        check_precision(precision, self.dtype, where)
        check(isinstance(time_limit, (int, float)) and not isinstance(time_limit, bool) and time_limit >= 0,
              f"{where}.time_limit must be a number of seconds >= 0 (0: no limit), got {time_limit!r}",
              f"{where}.time_limit", f"bind {where}.time_limit = 0 or a number of seconds")
        self.dist = Distributed()
        self.device = self.dist.init(resolve_device(device, f"{where}.device"))
        enable_tf32(self.device)
        self.seed, self.precision = seed, precision
        self.stream_seed = seed + 1000 * self.dist.rank   # per-rank data and noise streams
        self.use_tensorboard, self.time_limit = tensorboard, float(time_limit)
        self._tensorboard = None
        self.step, self.wall_time = 0, 0.0
        self.running: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])

    def autocast(self):
        """The precision context for forward passes and losses (bf16 autocast or nothing)."""
        return autocast(self.device, self.precision)

    # -- one update ---------------------------------------------------------------------------------------------------
    def apply_update(self, loss: torch.Tensor, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                     where: str, grad_clip: float) -> bool:
        """Backward, average gradients over ranks, clip, and step unless the loss or gradient is non-finite."""
        optimizer.zero_grad(set_to_none=True)
        # No check before backward (it would stall the host on the forward): a non-finite loss makes a
        # non-finite gradient norm, and the one check below skips the update, on every rank alike.
        loss.backward()
        if self.dist.enabled:
            self.dist.average_gradients(params)
            loss = self.dist.mean(loss)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        if not self.guard.ok(loss, grad_norm, where, self.step + 1):
            optimizer.zero_grad(set_to_none=True)
            return False
        optimizer.step()
        return True

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
        return {k: s / max(c, 1) for k, (s, c) in self.running_state().items()}

    # -- reporting ----------------------------------------------------------------------------------------------------
    def learning_rates(self) -> dict:
        """The current learning rate(s), by name, for every metrics row."""
        raise NotImplementedError

    def evaluate(self) -> dict:
        """One row of metrics.jsonl: running means, learning rates, bad steps, and the metrics of
        fixed-noise EMA samples (drawn on rank 0 only)."""
        row = {"step": self.step, "wall_time": round(self.wall_time, 3)}
        row.update(self.running_means())
        row.update({**self.learning_rates(), "bad_steps": self.guard.total})
        if self.dist.is_main:
            samples = self.sample(self.eval_samples)
            self.last_samples = samples
            if self.data.is_image:
                self.save_sample_grid(samples)
            for metric in self.metrics:
                row.update(metric(samples))
        self.report(row)
        return row

    def report(self, row: dict) -> None:
        """Append a row to metrics.jsonl and its numbers to TensorBoard (rank 0 only); resets the running means."""
        if torch.cuda.is_available() and self.device.type == "cuda":
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

    def save_sample_grid(self, samples: torch.Tensor) -> None:
        """The fixed-noise samples of this evaluation as ``RUN/samples/step_XXXXXXXX.png`` (image data, rank 0)."""
        from realuid.pictures import image_grid_png

        if not self.dist.is_main or samples.ndim != 4:
            return
        folder = self.out_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        image_grid_png(samples[:64], folder / f"step_{self.step:08d}.png")

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def checkpoint_meta(self) -> dict:
        """What a checkpoint says about itself: trainer, shapes, and the run's operative config (for sampling)."""
        import gin

        config = self.out_dir / "config.gin"
        fields = getattr(self, "fields", None)
        data = getattr(self, "data", None)
        return {"trainer": self.owner, "kind": self.model_kind,
                "config": config.read_text() if config.is_file() else gin.operative_config_str(),
                "parameterization": getattr(self, "parameterization", None) or getattr(fields, "parameterization", None),
                "path": type(getattr(self, "path", None)).__name__, "shape": list(getattr(self, "shape", ())),
                "num_classes": int(getattr(data, "num_classes", 0)), "world_size": self.dist.world_size}

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

    def save(self) -> Path | None:
        """Write a checkpoint of the current state (rank 0); refuses (TrainingDiverged) if any weight is NaN/Inf."""
        state = self.state_dict()
        if self.dist.enabled:
            state["ranks"] = self.dist.gather(self.rank_streams())
            self.dist.check_replicas({part: state[part] for part in self.weight_parts}, self.step)
        if not self.dist.is_main:
            return None
        for part in self.weight_parts:
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
        state = found[1]
        self.load_state_dict(state)
        ranks = state.get("ranks")
        if self.dist.enabled:
            if ranks is not None and len(ranks) == self.dist.world_size:
                self.load_rank_streams(ranks[self.dist.rank])
            else:
                warn(f"the checkpoint was written by {len(ranks or [0])} process(es), this run has "
                     f"{self.dist.world_size}: random streams restart from per-rank seeds")
                self.reseed_streams(self.stream_seed + self.step)
        if self.dist.is_main:
            self.log.truncate_after(self.step)

    def reseed_streams(self, seed: int) -> None:
        self.data.seed(seed + 1)
        self.rng.manual_seed(seed + 2)

    # -- the loop -----------------------------------------------------------------------------------------------------
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
                task = bar.add_task(self.progress_label, total=self.steps, completed=self.step, rate="", status="") \
                    if show else None
                tick = time.perf_counter()
                while self.step < self.steps:
                    logs = self.train_step()
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
                                   status=self._status(logs, last_row))
                    if out_of_time:
                        if self.dist.is_main:
                            warn(f"time limit of {self.time_limit:g} s reached at step {self.step} of {self.steps}; "
                                 "the final checkpoint is written (continue with --resume and a larger time_limit)")
                        break
            if self.dist.is_main:
                self.write_artifacts()
        finally:
            self.close_reporting()
        self.dist.barrier()
        return last_row
