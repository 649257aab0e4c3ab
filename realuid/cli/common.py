"""What every command shares: the two consoles, ``--debug``, :func:`fail`, and small argument helpers.

Imports no other ``realuid.cli`` module, so any command module can import it.
"""

from __future__ import annotations

import shlex
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from realuid.errors import UserError, check

console = Console()
errors = Console(stderr=True)
SMOKE_PRESET = Path(__file__).resolve().parents[2] / "gin" / "smoke" / "smoke.gin"
_debug = False


def set_debug(on: bool) -> None:
    """Whether :func:`fail` prints the Python traceback (the ``--debug`` option)."""
    global _debug
    _debug = on


def fail(err: BaseException) -> None:
    """Print a user error as one paragraph and exit 2, or the error's own ``exit_code`` (traceback under --debug).

    Exit codes: 2 bad input (``UserError``), 3 training diverged (non-finite
    losses, ``TrainingDiverged``), 130 / 143 stopped by SIGINT / SIGTERM after a
    checkpoint (``RunInterrupted``). See docs/RELIABILITY.md.
    """
    from rich.markup import escape

    if _debug:
        traceback.print_exception(err)
    message = getattr(err, "message", None) or str(err)
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(getattr(err, "exit_code", 2))


def progress(total: int, label: str):
    """A rich progress bar on stderr, shown only on a terminal and cleared when done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=errors, transient=True, disable=not errors.is_terminal)


def command_line() -> str:
    """This process's command line, quoted so that it can be pasted into a shell (recorded in result files)."""
    return "realuid " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def parse_nfe(text: Optional[str]) -> Optional[int]:
    """The ``--nfe`` value as a positive integer (None when not given); checked before any model is loaded."""
    if text is None:
        return None
    try:
        nfe = int(text.strip())
    except ValueError:
        nfe = None
    check(nfe is not None and nfe >= 1,
          f"--nfe must be a positive integer (the number of field evaluations of a teacher's ODE), got {text}",
          "--nfe", "give --nfe 1 or more, e.g. --nfe 100 (Heun) or --nfe 1 (one Euler step); one-step students "
          "need none")
    return nfe


def smoke_bindings(resume: bool) -> list[str]:
    """The ``include`` line of the smoke preset, as the first extra binding."""
    if resume:
        raise UserError("--smoke applies when a run starts; a resumed run keeps the config it started with",
                        "--smoke", "drop --smoke when resuming")
    if not SMOKE_PRESET.is_file():
        raise UserError(f"the smoke preset {SMOKE_PRESET} is missing", "--smoke",
                        "run realuid from a source checkout (the preset lives in gin/smoke/)")
    return [f"include '{SMOKE_PRESET}'"]
