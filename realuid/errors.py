"""User-facing errors.

Every bad input a researcher can make (a recipe, a binding, a path on disk, a
parameter out of range) raises :class:`UserError` with three parts: *what* is
wrong, *where* it was found, and *how* to fix it. The CLI prints it as one
paragraph and exits with code 2; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """A mistake in the user's input, reported without a traceback.

    Args:
        what: what is wrong, in one sentence.
        where: the file, binding, component or argument where it was found.
        fix: how to fix it.
    """

    exit_code = 2

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        parts = [self.what.rstrip(".") + "."]
        if self.where:
            parts.append(f"Where: {self.where}.")
        if self.fix:
            parts.append(f"Fix: {self.fix.rstrip('.')}.")
        return " ".join(parts)


def check(condition: bool, what: str, where: str | None = None, fix: str | None = None) -> None:
    """Raise :class:`UserError` unless ``condition`` holds."""
    if not condition:
        raise UserError(what, where, fix)


def check_range(value: float, name: str, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, high_open: bool = False, where: str | None = None) -> None:
    """Check ``low <(=) value <(=) high`` (a finite real number) and name the parameter and the rule if not."""
    import math
    import numbers

    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a 0-d tensor or array
        value = value.item()
    where = where or f"the value bound to {name}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"{name} must be a number, got {value!r} ({type(value).__name__})", where,
                        f"bind {name} to a number (no quotes)")
    if not math.isfinite(value):
        raise UserError(f"{name} = {value!r} is not a finite number", where, f"bind {name} to a finite value")
    ok = True
    if low is not None:
        ok &= value > low if low_open else value >= low
    if high is not None:
        ok &= value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{low} {'<' if low_open else '<='} "
        hi = "" if high is None else f" {'<' if high_open else '<='} {high}"
        raise UserError(f"{name} = {value!r} breaks the rule {lo}{name}{hi}", where,
                        f"bind {name} to a value with {lo}{name}{hi}")


def warn(message: str) -> None:
    """One warning line on stderr (above the progress bar, which redirects stderr)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


#: the largest count a loop option may take: steps are named with 8 digits in checkpoint files
MAX_STEPS = 99_999_999
#: sizes (batches, sample counts) index tensors with 32-bit integers in some kernels
MAX_SIZE = 2**31 - 1
#: seeds are offset per rank and per stream (seed + 1000 * rank + 10_000) and must stay a signed 64-bit integer
MAX_SEED = 2**62


def check_count(value, name: str, low: int = 1, high: int = MAX_SIZE) -> int:
    """Check that ``value`` is an integer (not a bool) with ``low <= value <= high``; returns it."""
    import numbers

    rule = "a positive integer" if low == 1 else f"an integer >= {low}"
    fix = f"bind {name} to an integer from {low} to {high:,}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"{name} must be {rule}, got {value!r} ({type(value).__name__})",
                        f"the value bound to {name}", fix)
    if value < low:
        raise UserError(f"{name} must be {rule}, got {value!r}", f"the value bound to {name}", fix)
    if value > high:
        raise UserError(f"{name} = {value:,} is too large: it must be at most {high:,}", f"the value bound to {name}",
                        fix)
    return int(value)
