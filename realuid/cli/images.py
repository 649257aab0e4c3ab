"""Commands of the image stack: ``realuid sample``, ``realuid eval``, ``realuid registry list|add``, ``run --smoke``.

Registered on the main typer app by :func:`register_commands` (called from
:mod:`realuid.cli`); kept in their own module so that ``cli.py`` stays small.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from realuid.errors import UserError, check

console = Console()
errors = Console(stderr=True)
SMOKE_PRESET = Path(__file__).resolve().parents[2] / "gin" / "smoke" / "smoke.gin"
FD_CLASSIFIER_DEFAULT = Path("registry/checkpoints/fd_classifier.pt")


def smoke_bindings(resume: bool) -> list[str]:
    """The ``include`` line of the smoke preset, as the first extra binding."""
    if resume:
        raise UserError("--smoke applies when a run starts; a resumed run keeps the config it started with",
                        "--smoke", "drop --smoke when resuming")
    if not SMOKE_PRESET.is_file():
        raise UserError(f"the smoke preset {SMOKE_PRESET} is missing", "--smoke",
                        "run realuid from a source checkout (the preset lives in gin/smoke/)")
    return [f"include '{SMOKE_PRESET}'"]


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


def _command_line() -> str:
    return "realuid " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _progress(total: int, label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=errors, transient=True, disable=not errors.is_terminal)


def _generate(source: str, num: int, nfe: Optional[int], solver: str, cfg: float, batch_size: int, device: str,
              seed: int, precision: str):
    """(images float [-1, 1] [N, C, H, W], labels or None, info dict) from a trained teacher or student."""
    import torch

    from realuid.devices import PRECISIONS, resolve_device
    from realuid.models.loading import load_trained
    from realuid.sampling import generate

    if num < 1 or batch_size < 1:
        raise UserError("--num and --batch-size must be positive", "--num / --batch-size", "give positive counts")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}", "--precision", f"use one of {', '.join(PRECISIONS)}")
    dev = resolve_device(device, "--device")
    model = load_trained(source, dev)
    if model.kind == "teacher":
        if nfe is None:
            raise UserError(f"{source} is a teacher: its ODE sampler needs a number of field evaluations",
                            "--nfe", "give --nfe N, e.g. --nfe 100 (Heun) or --nfe 1 (one Euler step)")
    elif nfe not in (None, 1):
        raise UserError(f"{source} is a one-step student; --nfe {nfe} does not apply", "--nfe",
                        "drop --nfe (or give --nfe 1)")
    if cfg != 1.0 and model.kind == "student":
        raise UserError(f"{source} is a one-step student; guidance (--cfg) applies to teachers", "--cfg",
                        "drop --cfg, or distil from a guided teacher (CheckpointTeacher.guidance)")
    if cfg != 1.0 and not model.num_classes:
        raise UserError(f"--cfg {cfg} needs a class-conditional model; {source} is unconditional", "--cfg",
                        "drop --cfg")
    with _progress(num, f"sampling {source}") as bar:
        task = bar.add_task("sample", total=num)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        images, labels = generate(model, num, nfe, solver, cfg, batch_size, seed, dev, precision,
                                  progress=lambda done: bar.update(task, completed=done))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
    info = {"source": source, "kind": model.kind, "checkpoint": str(model.checkpoint), "step": model.step,
            "nfe": 1 if model.kind == "student" else nfe, "solver": solver if model.kind == "teacher" else "one step",
            "cfg": cfg, "num": num, "seed": seed, "precision": precision, "device": str(dev),
            "seconds": round(seconds, 3), "images_per_s": round(num / max(seconds, 1e-9), 1)}
    return images, labels, info


def sample(
    source: str = typer.Argument(..., help="Run folder, checkpoint file or registry name of a teacher or student."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for samples.npz, samples.png and sample.json."),
    nfe: Optional[str] = typer.Option(None, "--nfe", metavar="<int>", help="Field evaluations of a teacher's ODE, an "
                                      "integer >= 1 (students: 1)."),
    num: int = typer.Option(50000, "--num", help="Number of samples."),
    solver: str = typer.Option("heun", "--solver", help="Teacher ODE solver: euler or heun."),
    cfg: float = typer.Option(1.0, "--cfg", help="Classifier-free guidance scale (class-conditional models)."),
    batch_size: int = typer.Option(500, "--batch-size", help="Samples per batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:i]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or bf16 (autocast of the network)."),
):
    """Sample a trained model: DIR/samples.npz (uint8 images N x H x W x C, labels) and a PNG grid."""
    import numpy as np

    from realuid.cli.app import fail
    from realuid.pictures import image_grid_png
    from realuid.io import atomic_write_bytes, atomic_write_text
    from realuid.metrics.features import quantize

    try:
        nfe_value = parse_nfe(nfe)   # before the model is looked up and loaded
        images, labels, info = _generate(source, num, nfe_value, solver, cfg, batch_size, device, seed, precision)
        if images.ndim != 4:
            raise UserError(f"{source} makes samples of shape {tuple(images.shape[1:])}, not images", "SOURCE",
                            "sample image models only")
        out.mkdir(parents=True, exist_ok=True)
        import io

        buffer = io.BytesIO()
        arrays = {"images": quantize(images).permute(0, 2, 3, 1).contiguous().numpy()}   # N x H x W x C
        if labels is not None:
            arrays["labels"] = labels.numpy()
        np.savez(buffer, **arrays)
        atomic_write_bytes(out / "samples.npz", buffer.getvalue())
        image_grid_png(images[:64], out / "samples.png")
        info["command"] = _command_line()
        atomic_write_text(out / "sample.json", json.dumps(info, indent=2) + "\n")
    except UserError as err:
        fail(err)
    console.print(f"[green]wrote[/] {out / 'samples.npz'} ({info['num']} images, {info['images_per_s']:.0f} "
                  f"images/s) and {out / 'samples.png'}")


def _load_npz(path: Path):
    import numpy as np
    import torch

    try:
        with np.load(path) as arrays:
            key = "images" if "images" in arrays else "arr_0" if "arr_0" in arrays else None
            if key is None:
                raise UserError(f"{path} holds no 'images' (or 'arr_0') array", str(path),
                                "give an .npz written by `realuid sample`")
            images = torch.from_numpy(arrays[key])
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable .npz file ({err})", str(path),
                        "give an .npz written by `realuid sample`") from None
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"{path} holds {tuple(images.shape)} {images.dtype} images, not uint8 N x H x W x 3",
                        str(path), "give an .npz written by `realuid sample`")
    return images


def evaluate(
    source: str = typer.Argument(..., help="samples.npz (or a folder holding one), or a run folder / registry name "
                                 "to sample first."),
    inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="Inception-v3 weights file "
                                                    "for FID/IS (weights-inception-2015-12-05-6726825d.pth)."),
    fd_classifier: Optional[str] = typer.Option(None, "--fd-classifier", help="FD classifier checkpoint (default "
                                                f"{FD_CLASSIFIER_DEFAULT} when it exists)."),
    fid: bool = typer.Option(True, "--fid/--no-fid", help="Compute FID/IS (needs the Inception weights)."),
    num: int = typer.Option(50000, "--num", help="Samples to draw when SOURCE is a model."),
    nfe: Optional[str] = typer.Option(None, "--nfe", metavar="<int>", help="Teacher ODE evaluations (an integer >= 1) "
                                      "when SOURCE is a teacher."),
    solver: str = typer.Option("heun", "--solver"),
    cfg: float = typer.Option(1.0, "--cfg"),
    batch_size: int = typer.Option(500, "--batch-size"),
    device: str = typer.Option("auto", "--device"),
    seed: int = typer.Option(0, "--seed"),
    precision: str = typer.Option("fp32", "--precision"),
    reference_split: str = typer.Option("train", "--reference-split", help="CIFAR-10 split of the reference."),
    reference_limit: Optional[int] = typer.Option(None, "--reference-limit", help="Use only the first N reference "
                                                  "images (smoke tests; the reference statistics are cached)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="Also save the first 64 samples as a PNG grid."),
):
    """FID / Inception Score (torch-fidelity) and the classifier FD of samples or of a trained model."""
    from realuid.cli.app import fail

    try:
        nfe_value = parse_nfe(nfe)   # before the metrics load their networks and reference statistics
        metrics = []
        if fid:
            from realuid.metrics.fidelity import TorchFidelityFID

            try:
                metrics.append(TorchFidelityFID(inception_weights=inception_weights, reference_split=reference_split,
                                                reference_limit=reference_limit))
            except UserError as err:
                err.fix = (err.fix or "").rstrip(".") + "; or pass --no-fid to compute only the classifier FD"
                raise
        classifier = fd_classifier or (str(FD_CLASSIFIER_DEFAULT) if FD_CLASSIFIER_DEFAULT.is_file() else None)
        if classifier is not None:
            from realuid.metrics.features import ClassifierFD

            metrics.append(ClassifierFD(classifier_path=classifier, reference_split=reference_split,
                                        reference_limit=reference_limit))
        elif not fid:
            from realuid.metrics.features import TRAIN_COMMAND

            raise UserError("--no-fid leaves nothing to compute: no FD classifier was given and "
                            f"{FD_CLASSIFIER_DEFAULT} does not exist", "--fd-classifier",
                            f"pass --fd-classifier PATH, or train one with `{TRAIN_COMMAND}`")
        path = Path(source)
        npz = path / "samples.npz" if path.is_dir() and (path / "samples.npz").is_file() else path
        info: dict = {"source": source}
        if npz.is_file() and npz.suffix == ".npz":
            images = _load_npz(npz)
            info["samples"] = str(npz)
        else:
            images, _, info = _generate(source, num, nfe_value, solver, cfg, batch_size, device, seed, precision)
        info["num"] = len(images)
        if grid is not None:
            from realuid.pictures import image_grid_png
            from realuid.metrics.features import images_to_unit, quantize

            grid.parent.mkdir(parents=True, exist_ok=True)
            image_grid_png(images_to_unit(quantize(images[:64])), grid)
        results = {}
        for metric in metrics:
            results.update(metric(images))
        info.update({"metrics": results, "command": _command_line()})
        if classifier is not None:
            info["fd_classifier_checkpoint"] = classifier
    except UserError as err:
        fail(err)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(info, indent=2) + "\n")
    console.print_json(json.dumps(info))
    if classifier is None:
        errors.print(f"note: no classifier FD (no --fd-classifier and no {FD_CLASSIFIER_DEFAULT})")


registry_app = typer.Typer(no_args_is_help=True, help="The registry of trained models (registry/*.toml).")


@registry_app.command("list")
def registry_list(verify: bool = typer.Option(False, "--verify", help="Check each checkpoint's sha256.")):
    """Every registered model: name, kind, recipe, checkpoint status and metrics."""
    from realuid.cli.app import fail
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


@registry_app.command("add")
def registry_add(
    name: str = typer.Argument(..., help="Registry name (letters, digits, _ and -)."),
    source: Path = typer.Argument(..., help="Run folder (its newest good checkpoint) or checkpoint file."),
    kind: Optional[str] = typer.Option(None, "--kind", help="teacher, student or classifier (default: from the "
                                       "checkpoint)."),
    metric: list[str] = typer.Option([], "--metric", help="NAME=VALUE measured by --metric-command (repeatable)."),
    metric_command: str = typer.Option("", "--metric-command", help="The command that measured the metrics."),
):
    """Write registry/NAME.toml for a trained run (checkpoint path, sha256, recipe, command, metrics)."""
    import re

    from realuid.cli.app import fail
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


def register_commands(app: typer.Typer, fail) -> None:
    """Add sample, eval and the registry group to the main app."""
    app.command("sample")(sample)
    app.command("eval")(evaluate)
    app.add_typer(registry_app, name="registry")
