"""The ``realuid`` typer app: every command, where it lives, and ``entry()`` (the console script).

The command modules import only :mod:`realuid.cli.common` and library code;
this module is the one place that puts them together.
"""

from __future__ import annotations

import os
import sys

import typer

from realuid.cli import images, registry, run
from realuid.cli.data import data_app
from realuid.cli.export import export
from realuid.cli.importing import import_checkpoint
from realuid.cli.common import errors, set_debug
from realuid.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="One-step distillation of matching models (UID / RealUID).")


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks for errors.")):
    set_debug(debug)


app.command("run")(run.run)
app.command("list-components")(run.list_components)
app.command("show")(run.show)
app.command("sample")(images.sample)
app.command("eval")(images.evaluate)
app.command("export")(export)
app.command("import")(import_checkpoint)

registry_app = typer.Typer(no_args_is_help=True, help="The registry of trained models (registry/*.toml).")
registry_app.command("list")(registry.list_models)
registry_app.command("add")(registry.add)
app.add_typer(registry_app, name="registry")
app.add_typer(data_app, name="data")


def entry() -> None:
    """The ``realuid`` console script (and ``python -m realuid``)."""
    code = 0
    try:
        app()
    except UserError as err:  # raised outside a command's own handler
        from rich.markup import escape

        errors.print(f"error: {escape(err.message)}", highlight=False, soft_wrap=True)
        code = err.exit_code
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun rank leaves without the interpreter's teardown: gloo's worker threads can still hold
        # tensors then, and finalising them aborts the process (SIGABRT) after a run that succeeded
        # (pytorch/pytorch#190489). Every file is closed and the process group destroyed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
