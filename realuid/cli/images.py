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

from realuid.cli.common import command_line, console, errors, fail, parse_nfe, progress
from realuid.errors import UserError

WEIGHTS_ENV = "REALUID_INCEPTION_WEIGHTS"   # as realuid.metrics.fidelity.WEIGHTS_ENV (not imported: torch)

FD_CLASSIFIER_DEFAULT = Path("registry/checkpoints/fd_classifier.pt")
#: the most sample sets ``eval --seeds`` draws (each is --num samples)
MAX_SEEDS = 1000
#: how the classifier FD is labelled wherever it is reported
FD_CLASSIFIER_NOTE = ("offline stand-in: a CIFAR-10 classifier's features, not Inception; not comparable with "
                      "published FID")


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
                                                    "for FID/IS (torch-fidelity's weights-inception-2015-12-05-"
                                                    f"6726825d.pth; default ${WEIGHTS_ENV})."),
    ref_stats: Optional[Path] = typer.Option(None, "--ref-stats", help="FID against published reference statistics "
                                             "instead of the CIFAR-10 shards: an .npz with arrays 'mu' [2048] and "
                                             "'sigma' [2048, 2048] (EDM / SiD fid-refs, clean-fid, pytorch-fid, ADM "
                                             "reference batches, `realuid data stats`), or torch-fidelity's .pt "
                                             "cache (a dict with 'mu' and 'sigma'). Inception-v3 pool features only."),
    seeds: int = typer.Option(1, "--seeds", help=f"Sample --num images this many times (1 to {MAX_SEEDS}), with "
                              "seeds --seed, --seed + 1, ...; each metric is reported as mean, sample standard "
                              "deviation (ddof=1) and per-seed values."),
    fd_classifier: Optional[str] = typer.Option(None, "--fd-classifier", help="FD classifier checkpoint (default "
                                                f"{FD_CLASSIFIER_DEFAULT} when it exists) for fd_classifier, the "
                                                "offline stand-in: not Inception, not comparable with published "
                                                "FID."),
    fid: bool = typer.Option(True, "--fid/--no-fid", help="Compute FID/IS (needs the Inception weights)."),
    inception_score: bool = typer.Option(True, "--is/--no-is", help="Also compute the Inception Score with FID."),
    num: int = typer.Option(50000, "--num", help="Samples to draw (per seed) when SOURCE is a model."),
    nfe: Optional[str] = typer.Option(None, "--nfe", metavar="<int>", help="Teacher ODE evaluations (an integer >= 1) "
                                      "when SOURCE is a teacher."),
    solver: str = typer.Option("heun", "--solver"),
    cfg: float = typer.Option(1.0, "--cfg"),
    batch_size: int = typer.Option(500, "--batch-size"),
    device: str = typer.Option("auto", "--device"),
    seed: int = typer.Option(0, "--seed", help="Seed of the first sample set."),
    precision: str = typer.Option("fp32", "--precision"),
    reference_split: str = typer.Option("train", "--reference-split", help="CIFAR-10 split of the reference."),
    reference_limit: Optional[int] = typer.Option(None, "--reference-limit", help="Use only the first N reference "
                                                  "images (smoke tests; the reference statistics are cached)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="Also save the first 64 samples as a PNG grid."),
):
    """FID / Inception Score (torch-fidelity) and the classifier FD of samples or of a trained model.

    With --seeds K the model is sampled K times (seeds --seed ... --seed + K - 1)
    and each metric is reported as mean, standard deviation and per-seed values.
    The JSON records the sample count, seeds, sampler, model (with its
    checkpoint's sha256), the reference (a --ref-stats file with its sha256),
    the Inception weights file with its sha256, and the command line.
    """
    try:
        nfe_value = parse_nfe(nfe)   # before the metrics load their networks and reference statistics
        _check_seeds(seeds)
        path = Path(source)
        npz = path / "samples.npz" if path.is_dir() and (path / "samples.npz").is_file() else path
        from_file = npz.is_file() and npz.suffix == ".npz"
        if from_file and seeds != 1:
            raise UserError(f"--seeds {seeds} samples a model {seeds} times, but {source} is a file of samples",
                            "--seeds", "give a run folder, registry name or export folder as SOURCE, or drop --seeds")
        record: dict = {}
        metrics = []
        if ref_stats is not None:
            if not fid:
                raise UserError("--ref-stats gives FID's reference, and --no-fid turns FID off", "--ref-stats",
                                "drop --no-fid (or drop --ref-stats)")
            record["reference"] = _reference_file(ref_stats)
        if fid:
            from realuid.metrics.fidelity import TorchFidelityFID

            record["inception_weights"] = _weights_record(inception_weights, ref_stats is None)
            metrics.append(TorchFidelityFID(inception_weights=record["inception_weights"]["path"],
                                            reference_split=reference_split, reference_limit=reference_limit,
                                            inception_score=inception_score, reference_stats=ref_stats))
            if ref_stats is None:
                record["reference"] = {"kind": "CIFAR-10 shards", "split": reference_split, "limit": reference_limit}
        classifier = fd_classifier or (str(FD_CLASSIFIER_DEFAULT) if FD_CLASSIFIER_DEFAULT.is_file() else None)
        if classifier is None and not fid:
            from realuid.metrics.classifier import TRAIN_COMMAND

            raise UserError("--no-fid leaves nothing to compute: no FD classifier was given and "
                            f"{FD_CLASSIFIER_DEFAULT} does not exist", "--fd-classifier",
                            f"pass --fd-classifier PATH, or train one with `{TRAIN_COMMAND}`")
        if classifier is not None:
            from realuid.metrics.classifier_fd import ClassifierFD

            metrics.append(ClassifierFD(classifier_path=classifier, reference_split=reference_split,
                                        reference_limit=reference_limit))
        model = None
        if from_file:
            images = _load_npz(npz)
            shape = (images.shape[3], images.shape[1], images.shape[2])   # N x H x W x C -> C, H, W
        else:
            model = _load_model(source, nfe_value, cfg, num, batch_size, device, precision)
            shape = tuple(model.shape)
        if classifier is not None and not _classifier_reads(shape, fd_classifier is not None, classifier):
            classifier, metrics = None, metrics[:-1]
        runs = []
        for k in range(seeds):
            if model is None:
                info = _samples_record(npz)
            else:
                images, _, info = _sample_model(model, source, num, nfe_value, solver, cfg, batch_size, device,
                                                seed + k, precision)
            if grid is not None and k == 0:
                from realuid.pictures import image_grid_png, images_to_unit, quantize

                grid.parent.mkdir(parents=True, exist_ok=True)
                image_grid_png(images_to_unit(quantize(images[:64])), grid)
            results = {}
            for metric in metrics:
                results.update(metric(images))
            runs.append((info, len(images), results))
            del images
        info = _eval_record(source, runs, model, record, classifier)
    except UserError as err:
        fail(err)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(info, indent=2) + "\n")
    console.print_json(json.dumps(info))
    for name, summary in info["summary"].items():
        spread = "" if summary["std"] is None else f" +- {summary['std']:.4g} (sample std over {seeds} seeds)"
        console.print(f"{name} = {summary['mean']:.6g}{spread}"
                      + ("  [offline stand-in, not comparable with published FID]" if name == "fd_classifier" else ""))
    if classifier is None:
        errors.print(f"note: no classifier FD (no --fd-classifier and no {FD_CLASSIFIER_DEFAULT})")


def _check_seeds(seeds: int) -> None:
    if not 1 <= seeds <= MAX_SEEDS:
        raise UserError(f"--seeds must be from 1 to {MAX_SEEDS:,} (the number of sample sets, each of --num "
                        f"samples), got {seeds:,}", "--seeds",
                        "give --seeds 1 for one sample set, or e.g. --seeds 3 for a mean and standard deviation")


def _reference_file(path: Path) -> dict:
    """The record of a ``--ref-stats`` file, after checking it holds 2048-d Inception statistics."""
    from realuid.io import sha256_file
    from realuid.metrics.fidelity import INCEPTION_DIM
    from realuid.metrics.frechet import read_reference_stats

    try:
        mu, _ = read_reference_stats(path)
    except UserError as err:
        err.where = f"--ref-stats {err.where}"
        raise
    if len(mu) != INCEPTION_DIM:
        raise UserError(f"{path} holds statistics of {len(mu)}-dimensional features; FID compares Inception-v3 pool "
                        f"features, which have {INCEPTION_DIM}", f"--ref-stats {path}",
                        f"give statistics of {INCEPTION_DIM}-d Inception-v3 pool features (EDM / clean-fid / "
                        "torch-fidelity files, or `realuid data stats SRC --out FILE.npz --inception-weights PATH`), "
                        "not of another network")
    record = {"kind": "statistics file", "path": str(path.resolve()), "name": path.name,
              "sha256": sha256_file(path), "dim": int(len(mu))}
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as arrays:
            if "num_images" in arrays.files and arrays["num_images"].ndim == 0:
                record["num_images"] = int(arrays["num_images"])
    return record


def _weights_record(path: Optional[str], cifar_reference: bool) -> dict:
    """The Inception weights file (``--inception-weights`` or $REALUID_INCEPTION_WEIGHTS) with its sha256."""
    from realuid.io import sha256_file
    from realuid.metrics.fidelity import INCEPTION_WEIGHTS_SHA256, inception_weights_path

    try:
        weights = inception_weights_path(path, "--inception-weights", stand_in=cifar_reference)
    except UserError as err:
        if cifar_reference:
            err.fix = (err.fix or "").rstrip(".") + "; or pass --no-fid to compute only the classifier FD"
        raise
    digest = sha256_file(weights)
    return {"path": str(weights.resolve()), "name": weights.name, "sha256": digest,
            "expected_sha256": INCEPTION_WEIGHTS_SHA256, "matches_expected": digest == INCEPTION_WEIGHTS_SHA256}


def _classifier_reads(shape: tuple, asked: bool, classifier: str) -> bool:
    """Whether the FD classifier can read samples of ``shape`` (C, H, W): 32x32 RGB only. Refused when asked for."""
    if shape == (3, 32, 32):
        return True
    if asked:
        raise UserError(f"the FD classifier reads 32x32 RGB images and the samples are {shape[1]}x{shape[2]} "
                        f"with {shape[0]} channel(s)", "--fd-classifier", "drop --fd-classifier for this data")
    errors.print(f"note: {classifier} not used: the classifier FD reads 32x32 RGB images, the samples are "
                 f"{shape[1]}x{shape[2]}")
    return False


def _samples_record(npz: Path) -> dict:
    """What is known of a samples file: its sha256 and, from sample.json beside it, how it was sampled."""
    from realuid.io import sha256_file

    info: dict = {"samples": str(npz), "samples_sha256": sha256_file(npz)}
    beside = npz.with_name("sample.json")
    if beside.is_file():
        try:
            info["sample_json"] = json.loads(beside.read_text())
            info["seed"] = info["sample_json"].get("seed")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            info.pop("sample_json", None)
    return info


def _checkpoint_sha256(model) -> Optional[str]:
    """The sha256 of the model's checkpoint (its .sha256 sidecar, verified on load, else the file's own)."""
    from realuid.io import sha256_file

    file = Path(model.checkpoint)
    sidecar = file.with_name(file.name + ".sha256")
    if sidecar.is_file():
        return sidecar.read_text().split()[0]
    return sha256_file(file) if file.is_file() else None


def _model_record(source: str, model) -> dict:
    from realuid.models.export import CONFIG_FILE, is_export_folder

    record = {"source": source, "kind": model.kind, "checkpoint": str(model.checkpoint),
              "checkpoint_sha256": _checkpoint_sha256(model), "step": model.step}
    if is_export_folder(source):
        training = json.loads((Path(source) / CONFIG_FILE).read_text()).get("training") or {}
        record.update(export=str(Path(source).resolve()), trained_checkpoint=training.get("checkpoint"),
                      trained_checkpoint_sha256=training.get("checkpoint_sha256"))
    return record


def _eval_record(source: str, runs: list, model, record: dict, classifier: Optional[str]) -> dict:
    """The eval JSON: mean / std / per-seed values of each metric, with everything that produced them."""
    import numpy as np

    first, num, _ = runs[0]
    names = list(runs[0][2])
    per_seed = {name: [results[name] for _, _, results in runs] for name in names}
    summary = {name: {"mean": float(np.mean(values)),
                      "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,   # a NaN stays NaN
                      "per_seed": values} for name, values in per_seed.items()}
    info: dict = {"source": source}
    if model is None:                                    # a samples file
        sampled = first.get("sample_json") or {}
        info.update(first)
        info["seeds"] = [sampled["seed"]] if "seed" in sampled else None
        info["sampler"] = {key: sampled.get(key) for key in ("nfe", "solver", "cfg", "precision")}
        info["model"] = {key: sampled.get(key) for key in ("source", "kind", "checkpoint", "step")}
    else:
        info.update({key: first[key] for key in ("kind", "checkpoint", "step", "nfe", "solver", "cfg", "precision",
                                                 "device")})
        seconds = sum(run[0]["seconds"] for run in runs)
        info.update(seed=first["seed"], seeds=[run[0]["seed"] for run in runs], seconds=round(seconds, 3),
                    images_per_s=round(num * len(runs) / max(seconds, 1e-9), 1))
        info["sampler"] = {key: first[key] for key in ("nfe", "solver", "cfg", "precision", "batch_size", "device")}
        info["model"] = _model_record(source, model)
    info.update(num=num, num_samples=num)
    info["metrics"] = {name: value["mean"] for name, value in summary.items()}       # one seed: the value itself
    info["summary"] = summary
    info["per_seed"] = [{"seed": run[0].get("seed"), "num_samples": run[1], "metrics": run[2],
                         **({"seconds": run[0]["seconds"]} if "seconds" in run[0] else {})} for run in runs]
    info.update(record)
    if classifier is not None:
        info["fd_classifier_checkpoint"] = classifier
        info["fd_classifier_note"] = FD_CLASSIFIER_NOTE
    info["command"] = command_line()
    return info


def _generate(source: str, num: int, nfe: Optional[int], solver: str, cfg: float, batch_size: int, device: str,
              seed: int, precision: str):
    """(images float [-1, 1] [N, C, H, W], labels or None, info dict) from a trained teacher or student."""
    model = _load_model(source, nfe, cfg, num, batch_size, device, precision)
    return _sample_model(model, source, num, nfe, solver, cfg, batch_size, device, seed, precision)


def _load_model(source: str, nfe: Optional[int], cfg: float, num: int, batch_size: int, device: str,
                precision: str):
    """The trained model behind ``source``, after checking the sampling options against it."""
    from realuid.devices import PRECISIONS, resolve_device
    from realuid.models.loading import load_trained

    if num < 1 or batch_size < 1:
        raise UserError("--num and --batch-size must be positive", "--num / --batch-size", "give positive counts")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}", "--precision", f"use one of {', '.join(PRECISIONS)}")
    model = load_trained(source, resolve_device(device, "--device"))
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
    return model


def _sample_model(model, source: str, num: int, nfe: Optional[int], solver: str, cfg: float, batch_size: int,
                  device: str, seed: int, precision: str):
    """(images float [-1, 1] [N, C, H, W], labels or None, info dict): ``num`` samples of a loaded model."""
    import torch

    from realuid.devices import resolve_device
    from realuid.sampling import generate

    dev = resolve_device(device, "--device")
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
            "batch_size": batch_size, "seconds": round(seconds, 3), "images_per_s": round(num / max(seconds, 1e-9), 1)}
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
