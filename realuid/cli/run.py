"""``realuid run`` (a recipe, or ``--resume`` a run folder), ``realuid list-components`` and ``realuid show``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from realuid.cli.common import console, errors, fail, smoke_bindings
from realuid.errors import UserError

#: what ``--smoke`` adds after the preset: a student whose smoke teacher is missing trains it first, in seconds
SMOKE_TRAINS_TEACHER = "CheckpointTeacher.train_missing = True"


def run(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe .gin file (omit with --resume)."),
    bind: list[str] = typer.Option([], "--bind", "-b", help="Extra gin binding 'Name.param = value' (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/<recipe>-<time>)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of every random stream (default 0; a resumed "
                                       "run keeps its own)."),
    import_: list[str] = typer.Option([], "--import", help="Module or .py file registering extra components."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    smoke: bool = typer.Option(False, "--smoke", help="Add the smoke preset gin/smoke/smoke.gin (CPU, tiny "
                               "networks, a few images and steps: checks a recipe end to end in seconds); a "
                               "missing smoke teacher is trained first."),
):
    """Run a recipe: distil (or train) and write the run folder."""
    from rich.markup import escape

    from realuid.engine.runner import run as run_recipe
    from realuid.engine.signals import RunInterrupted

    try:
        if resume is not None and out is not None and out != resume:
            raise UserError("--out and --resume name different folders", "--out/--resume",
                            "pass only --resume DIR to continue a run")
        if resume is None and recipe is None:
            raise UserError("no recipe given", "RECIPE argument", "e.g. `realuid run gin/realuid_fm_gmm.gin`")
        if resume is not None and not resume.is_dir():
            raise UserError(f"the run folder {resume} does not exist" if not resume.exists() else
                            f"--resume {resume} is a file, not a run folder", "--resume",
                            "give the folder of a previous run (see runs/)")
        if smoke:   # the smoke preset, and a missing smoke teacher trained first (CheckpointTeacher.train_missing)
            bind = smoke_bindings(resume is not None) + [SMOKE_TRAINS_TEACHER] + list(bind)
        loop = run_recipe(recipe, bind, import_, resume or out, seed, resume is not None, overwrite, progress)
    except UserError as err:
        fail(err)
    except RunInterrupted as err:  # SIGINT/SIGTERM: a clean stop after a checkpoint, exit 128 + signal
        errors.print(f"stopped: {escape(err.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(err.exit_code)
    except OSError as err:  # the disk, not the code: full, read-only, vanished
        fail(UserError(f"a file operation failed: {err}", "the run folder or the data",
                       "check free space and permissions, then continue with --resume (--debug shows where)"))
    except KeyboardInterrupt:
        errors.print("interrupted: the last checkpoint written is kept; continue with --resume")
        raise typer.Exit(130)
    rows = loop.log.rows()
    if rows and loop.dist.is_main:   # under torchrun, one line for the run, not one per rank
        shown = {k: v for k, v in rows[-1].items() if isinstance(v, (int, float))}
        console.print(f"[green]done[/] {loop.out_dir}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()))


def list_components(kind: Optional[str] = typer.Option(None, "--kind", "-k", help="Only this kind.")):
    """Every registered component, grouped by kind, with its one-line summary."""
    from realuid.components import KINDS, components

    if kind is not None and kind not in KINDS:
        fail(UserError(f"unknown kind {kind!r}", "--kind", f"use one of {', '.join(KINDS)}"))
    table = Table(show_header=True, header_style="bold")
    table.add_column("kind")
    table.add_column("name")
    table.add_column("summary")
    for c in components(kind):
        table.add_row(c.kind, c.name, c.summary)
    console.print(table)


def show(name: str = typer.Argument(..., help="Component name, e.g. RealUID.")):
    """A component's configurable parameters and defaults, and its documentation."""
    import inspect

    from realuid.components import get

    try:
        c = get(name)
    except UserError as err:
        fail(err)
    console.print(f"[bold]{c.name}[/] ({c.kind}) — {c.cls.__module__}")
    table = Table(show_header=True, header_style="bold")
    table.add_column("parameter")
    table.add_column("default")
    for param, default in c.parameters():
        table.add_row(f"{c.name}.{param}", default)
    console.print(table)
    console.print(inspect.getdoc(c.cls) or "", highlight=False)
