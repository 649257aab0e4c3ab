"""The non-finite guard: an update whose loss or gradient is NaN/Inf is skipped, counted, and ends the run if it repeats."""

from __future__ import annotations

import torch

from realuid.errors import UserError, warn


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
    ``applied`` counts the updates taken per role: a run in which a role never
    took one (every update skipped) ends with :meth:`check_some_applied`, not a success.
    """

    def __init__(self, limit: int):
        self.limit, self.total = limit, 0
        self.streaks: dict[str, int] = {}
        self.applied: dict[str, int] = {}

    def ok(self, loss: torch.Tensor, grad_norm: torch.Tensor, where: str, step: int | None = None) -> bool:
        both = torch.stack([loss.detach().float().reshape(()), grad_norm.detach().float().reshape(()).to(loss.device)])
        if bool(torch.isfinite(both).all()):   # one host sync per update
            self.streaks[where] = 0
            self.applied[where] = self.applied.get(where, 0) + 1
            return True
        self.applied.setdefault(where, 0)
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
                                   f"training (TrainingLoop.max_bad_steps = {self.limit})",
                                   "lower the learning rate, raise the warm-up or grad_clip, or "
                                   "check the data and teacher, then continue from the last checkpoint with --resume")
        return False

    def check_some_applied(self) -> None:
        """Raise :class:`TrainingDiverged` if some role skipped every one of its updates."""
        never = [role for role, count in self.applied.items() if count == 0]
        if never:
            raise TrainingDiverged(f"every {' and every '.join(never)} update of the run was skipped (non-finite "
                                   f"loss or gradient, {self.total} in all): the run trained nothing",
                                   "training", "lower the learning rate, raise the warm-up or grad_clip, or check "
                                   "the data and teacher")

    def state_dict(self):
        return {"total": self.total, "streaks": dict(self.streaks), "applied": dict(self.applied)}

    def load_state_dict(self, state):
        self.total = int(state["total"])
        self.streaks = {str(k): int(v) for k, v in state.get("streaks", {}).items()}
        self.applied = {str(k): int(v) for k, v in state.get("applied", {}).items()}
