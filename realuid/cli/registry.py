"""``realuid registry list|add``: the store of trained models, one ``registry/NAME.toml`` manifest per model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from realuid.cli.common import console, fail
from realuid.errors import UserError


def list_models(verify: bool = typer.Option(False, "--verify", help="Check each checkpoint's sha256.")):
    """Every registered model: name, kind, recipe, checkpoint status and metrics."""
    from realuid.io import sha256_file
    from realuid.models.registry import list_manifests, registry_dir

    try:
        manifests = list_manifests()
    except UserError as err:
        fail(err)
    if not manifests:
        console.print(f"no manifests in {registry_dir()}/ (register a run with `realuid registry add NAME RUN`)")
        return
    table = Table(show_header=True, header_style="bold")
    for column in ("name", "kind", "recipe", "step", "checkpoint", "metrics"):
        table.add_column(column)
    for m in manifests:
        path = m.checkpoint_path
        status = "missing" if not path.is_file() else "present"
        if verify and path.is_file() and m.sha256:
            status = "sha256 ok" if sha256_file(path) == m.sha256 else "SHA256 MISMATCH"
        shown = ", ".join(f"{k}={v['value']:.4g}" if isinstance(v.get("value"), (int, float)) else f"{k}={v['value']}"
                          for k, v in m.metrics.items())
        table.add_row(m.name, m.kind, m.recipe or "-", "-" if m.step is None else str(m.step),
                      f"{m.checkpoint} ({status})", shown or "-")
    console.print(table)


def add(
    name: str = typer.Argument(..., help="Registry name (letters, digits, _ and -)."),
    source: Path = typer.Argument(..., help="Run folder (its newest good checkpoint) or checkpoint file."),
    kind: Optional[str] = typer.Option(None, "--kind", help="teacher, student or classifier (default: from the "
                                       "checkpoint)."),
    metric: list[str] = typer.Option([], "--metric", help="NAME=VALUE measured by --metric-command (repeatable)."),
    metric_command: str = typer.Option("", "--metric-command", help="The command that measured the metrics."),
):
    """Write registry/NAME.toml for a trained run (checkpoint path, sha256, recipe, command, metrics)."""
    from realuid.models.registry import register_run

    try:
        if not re.match(r"^[A-Za-z0-9_-]+$", name):
            raise UserError(f"{name!r} is not a registry name", "NAME", "use letters, digits, _ and -")
        metrics = {}
        for item in metric:
            key, sep, value = item.partition("=")
            try:
                metrics[key.strip()] = {"value": float(value), "command": metric_command}
            except ValueError:
                raise UserError(f"--metric {item!r} is not NAME=NUMBER", "--metric", "write e.g. --metric fd=12.5")
            if not sep:
                raise UserError(f"--metric {item!r} is not NAME=NUMBER", "--metric", "write e.g. --metric fd=12.5")
        manifest = register_run(name, source, kind, metrics=metrics)
    except UserError as err:
        fail(err)
    console.print(f"[green]wrote[/] {manifest.file}")
