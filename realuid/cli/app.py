"""The ``realuid`` command line (typer): run, list-components, show, and the image-stack commands."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from realuid.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="One-step distillation of matching models (UID / RealUID).")
console = Console()
errors = Console(stderr=True)
_DEBUG = {"on": False}


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks for errors.")):
    _DEBUG["on"] = debug


def fail(err: BaseException) -> None:
    """Print a user error as one paragraph and exit 2, or the error's own ``exit_code`` (traceback under --debug).

    Exit codes: 2 bad input (``UserError``), 3 training diverged (non-finite
    losses, ``TrainingDiverged``), 130 / 143 stopped by SIGINT / SIGTERM after a
    checkpoint (``RunInterrupted``). See docs/RELIABILITY.md.
    """
    from rich.markup import escape

    if _DEBUG["on"]:
        traceback.print_exception(err)
    message = getattr(err, "message", None) or str(err)
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(getattr(err, "exit_code", 2))


@app.command()
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
                               "networks, a few images and steps: checks a recipe end to end in seconds)."),
):
    """Run a recipe: distil (or train) and write the run folder."""
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
        if smoke:
            from realuid.cli.images import smoke_bindings

            bind = smoke_bindings(resume is not None) + list(bind)
        trainer = run_recipe(recipe, bind, import_, resume or out, seed, resume is not None, overwrite, progress)
    except UserError as err:
        fail(err)
    except RunInterrupted as err:  # SIGINT/SIGTERM: a clean stop after a checkpoint, exit 128 + signal
        from rich.markup import escape

        errors.print(f"stopped: {escape(err.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(err.exit_code)
    except OSError as err:  # the disk, not the code: full, read-only, vanished
        fail(UserError(f"a file operation failed: {err}", "the run folder or the data",
                       "check free space and permissions, then continue with --resume (--debug shows where)"))
    except KeyboardInterrupt:
        errors.print("interrupted: the last checkpoint written is kept; continue with --resume")
        raise typer.Exit(130)
    rows = trainer.log.rows()
    if rows:
        last = rows[-1]
        shown = {k: v for k, v in last.items() if isinstance(v, (int, float))}
        console.print(f"[green]done[/] {trainer.out_dir}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()))


@app.command("list-components")
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


@app.command()
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


from realuid.cli.images import register_commands  # noqa: E402  (sample, eval, registry)

register_commands(app, fail)


def entry() -> None:
    try:
        app()
    except UserError as err:  # raised outside a command's own handler
        from rich.markup import escape

        errors.print(f"error: {escape(err.message)}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    entry()
