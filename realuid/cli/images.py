"""``realuid sample`` and ``realuid eval``: draw images from a trained teacher or student, and score them.

``sample`` writes DIR/samples.npz, a PNG grid and sample.json; ``eval`` computes
FID / Inception Score and the classifier FD of such a file, or of a model it
samples first. A model is a run folder, checkpoint file or registry name, or a
folder written by ``realuid export`` (read without gin).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from realuid.cli.common import SMOKE_PRESET  # noqa: F401  (unused here; tests/test_images_smoke.py reads it here)
from realuid.cli.common import command_line, console, errors, fail, parse_nfe, progress
from realuid.errors import UserError

FD_CLASSIFIER_DEFAULT = Path("registry/checkpoints/fd_classifier.pt")


def sample(
    source: str = typer.Argument(..., help="Run folder, checkpoint file, registry name or export folder (`realuid "
                                 "export`) of a teacher or student."),
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
    import io

    import numpy as np

    from realuid.io import atomic_write_bytes, atomic_write_text
    from realuid.pictures import image_grid_png, quantize

    try:
        nfe_value = parse_nfe(nfe)   # before the model is looked up and loaded
        images, labels, info = _generate(source, num, nfe_value, solver, cfg, batch_size, device, seed, precision)
        if images.ndim != 4:
            raise UserError(f"{source} makes samples of shape {tuple(images.shape[1:])}, not images", "SOURCE",
                            "sample image models only")
        out.mkdir(parents=True, exist_ok=True)
        arrays = {"images": quantize(images).permute(0, 2, 3, 1).contiguous().numpy()}   # N x H x W x C
        if labels is not None:
            arrays["labels"] = labels.numpy()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(out / "samples.npz", buffer.getvalue())
        image_grid_png(images[:64], out / "samples.png")
        info["command"] = command_line()
        atomic_write_text(out / "sample.json", json.dumps(info, indent=2) + "\n")
    except UserError as err:
        fail(err)
    console.print(f"[green]wrote[/] {out / 'samples.npz'} ({info['num']} images, {info['images_per_s']:.0f} "
                  f"images/s) and {out / 'samples.png'}")


def evaluate(
    source: str = typer.Argument(..., help="samples.npz (or a folder holding one), or a run folder, registry name "
                                 "or export folder to sample first."),
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
            from realuid.metrics.classifier_fd import ClassifierFD

            metrics.append(ClassifierFD(classifier_path=classifier, reference_split=reference_split,
                                        reference_limit=reference_limit))
        elif not fid:
            from realuid.metrics.classifier import TRAIN_COMMAND

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
            from realuid.pictures import image_grid_png, images_to_unit, quantize

            grid.parent.mkdir(parents=True, exist_ok=True)
            image_grid_png(images_to_unit(quantize(images[:64])), grid)
        results = {}
        for metric in metrics:
            results.update(metric(images))
        info.update({"metrics": results, "command": command_line()})
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
    with progress(num, f"sampling {source}") as bar:
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


def _load_npz(path: Path):
    """The uint8 N x H x W x 3 images of an .npz written by ``realuid sample`` (key 'images', or 'arr_0')."""
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
