"""``realuid export RUN --out DIR``: a trained generator or teacher as model.safetensors + config.json."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from realuid.cli.common import console, fail
from realuid.errors import UserError


def export(
    run: str = typer.Argument(..., help="Run folder, checkpoint file or registry name of a trained student or "
                              "teacher."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for model.safetensors and config.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing export folder."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Store the weights as float32 or bfloat16 (half the "
                                        "size; loading casts them to the run's dtype). Default: the checkpoint's."),
):
    """Export the EMA generator (or teacher network): DIR/model.safetensors + DIR/config.json, for
    realuid.load_generator(DIR) (no gin, no run folder) and `realuid sample DIR`."""
    from realuid.models.export import WEIGHTS_FILE, export_run

    try:
        config = export_run(run, out, overwrite, dtype=dtype)
    except UserError as err:
        fail(err)
    except OSError as err:
        fail(UserError(f"a file operation failed: {err}", "--out", "check free space and permissions; nothing "
                       "was left half-written in --out"))
    size = (out / WEIGHTS_FILE).stat().st_size / 2**20
    what = (f"{config['kind']} {config['backbone']['name']}, step {config['training']['step']}, "
            f"{config.get('weights_dtype') or 'mixed dtypes'}")
    load = "realuid.load_generator" if config["kind"] == "student" else "realuid.load_teacher"
    console.print(f"[green]wrote[/] {out / WEIGHTS_FILE} ({size:.1f} MiB) and {out / 'config.json'} ({what}); "
                  f"load it with {load}({str(out)!r})", highlight=False, soft_wrap=True)
