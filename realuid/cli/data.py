"""``realuid data pack|info|stats``: image folders -> WebDataset shards, their manifest and checksums, and
Inception reference statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from realuid.cli.common import command_line, console, errors, fail, progress
from realuid.errors import UserError

data_app = typer.Typer(no_args_is_help=True, help="Image data: pack folders into shards, check them, reference "
                       "statistics.")


@data_app.command("pack")
def pack(
    src: Path = typer.Argument(..., help="Folder of images (one sub-folder per class, or the images directly) or a "
                               ".zip of one."),
    out: Path = typer.Option(..., "--out", "-o", help="Shard folder to create."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Resize every image to R x R (Lanczos); "
                                             "without it all images must share one size."),
    center_crop: bool = typer.Option(False, "--center-crop", help="Crop the largest central square first."),
    crop_size: Optional[int] = typer.Option(None, "--crop-size", help="Crop a central S x S square first (e.g. 140 "
                                            "for CelebA's aligned faces)."),
    image_format: str = typer.Option("png", "--format", help="png (lossless) or jpg."),
    quality: int = typer.Option(95, "--quality", help="JPEG quality (with --format jpg; 4:4:4 chroma)."),
    shard_size: int = typer.Option(5000, "--shard-size", help="Images per shard."),
    split: str = typer.Option("train", "--split", help="Split name: shards are named SPLIT-NNNNNN.tar."),
    seed: int = typer.Option(0, "--seed", help="Seed of the order the images are written in."),
    workers: int = typer.Option(4, "--workers", help="Decoding / encoding threads."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing shard folder."),
):
    """Pack images into WebDataset shards with manifest.json (atomic: OUT appears only when complete)."""
    from realuid.data.pack import pack_images

    try:
        with progress(0, f"packing {src}") as bar:
            task = bar.add_task("pack", total=None)
            manifest = pack_images(src, out, resolution, center_crop, crop_size, image_format.lower(), shard_size,
                                   quality, split, seed, workers, overwrite, command_line(),
                                   progress=lambda k: bar.advance(task, k),
                                   on_total=lambda n: bar.update(task, total=n))
    except UserError as err:
        fail(err)
    size = sum(s["bytes"] for s in manifest["shards"])
    classes = f"{len(manifest['classes'])} classes" if manifest["classes"] else "no classes"
    skipped = f"; skipped {manifest['skipped_files']} non-image file(s)" if manifest["skipped_files"] else ""
    console.print(f"[green]wrote[/] {out}: {manifest['count']} images {manifest['width']}x{manifest['height']} "
                  f"{manifest['format']}, {classes}, {len(manifest['shards'])} shard(s), {size / 1e6:.1f} MB{skipped}")


@data_app.command("info")
def info(
    shards: Path = typer.Argument(..., help="Shard folder written by `realuid data pack`."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check every shard's sha256."),
):
    """Print a shard folder's manifest and verify every shard (exit 2 naming the first bad one)."""
    from realuid.data.shards import check_shard, read_manifest

    try:
        manifest = read_manifest(shards)
        raw = manifest.raw
        table = Table(show_header=False)
        for key in ("split", "count", "resolution", "channels", "format", "quality", "shuffle_seed", "shard_size",
                    "source", "command", "realuid_version", "created"):
            if raw.get(key) is not None:
                table.add_row(key, str(raw[key]))
        classes = ", ".join(f"{i}={name}" for i, name in enumerate(manifest.classes)) or "none (unlabelled)"
        table.add_row("classes", classes)
        table.add_row("transform", str(raw.get("transform", "")))
        table.add_row("decoded size", f"{manifest.decoded_bytes / 1e9:.3f} GB (count x 3 x H x W uint8)")
        console.print(table)
        shard_table = Table(show_header=True, header_style="bold")
        for column in ("shard", "images", "bytes", "sha256"):
            shard_table.add_column(column)
        with progress(len(manifest.shards), "verifying") as bar:
            task = bar.add_task("verify", total=len(manifest.shards))
            for shard in manifest.shards:
                check_shard(manifest, shard, checksum=verify)
                shard_table.add_row(shard.name, str(shard.count), f"{shard.bytes:,}",
                                    f"{shard.sha256[:16]}... {'ok' if verify else '(size ok, not hashed)'}")
                bar.advance(task)
        console.print(shard_table)
        extra = sorted({p.name for p in manifest.folder.glob("*.tar")} - {s.name for s in manifest.shards})
        if extra:
            errors.print(f"warning: {len(extra)} .tar file(s) not in the manifest are ignored: {', '.join(extra[:5])}")
    except UserError as err:
        fail(err)
    console.print(f"[green]ok[/] {len(manifest.shards)} shard(s), {manifest.count} images" +
                  (", every sha256 matches" if verify else ", sizes match"))


@data_app.command("stats")
def stats(
    source: Path = typer.Argument(..., help="Shard folder (manifest.json), or a folder / .zip of images of one "
                                  "size."),
    out: Path = typer.Option(..., "--out", "-o", help="Statistics file to write (.npz with mu, sigma)."),
    inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="torch-fidelity's Inception "
                                                    "weights file (weights-inception-2015-12-05-6726825d.pth)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N images."),
    batch_size: int = typer.Option(200, "--batch-size", help="Images per Inception forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:i]."),
    workers: int = typer.Option(4, "--workers", help="Decoding threads."),
):
    """Inception-v3 feature statistics (mu, sigma; torch-fidelity's FID extractor and resize) of lossless images."""
    import numpy as np

    from realuid.data.shards import MANIFEST_NAME, read_images, read_manifest
    from realuid.devices import resolve_device
    from realuid.errors import check_count
    from realuid.metrics.fidelity import (INCEPTION_WEIGHTS_NAME, feature_statistics, inception_features,
                                          inception_weights_path)
    from realuid.metrics.frechet import write_reference_stats

    try:
        if out.suffix != ".npz":
            raise UserError(f"--out {out} does not end in .npz", "--out", "name the file e.g. celeba64_train.npz")
        weights = inception_weights_path(inception_weights, "--inception-weights")   # before reading any image
        check_count(batch_size, "--batch-size")
        if limit is not None:
            check_count(limit, "--limit")
        dev = resolve_device(device, "--device")
        if (source / MANIFEST_NAME).is_file():
            manifest = read_manifest(source)
            count = manifest.count if limit is None else min(limit, manifest.count)
            with progress(count, f"decoding {source}") as bar:
                task = bar.add_task("decode", total=count)
                images, _ = read_images(manifest, count, workers, progress=lambda k: bar.advance(task, k))
            kind, lossy = "shards", manifest.image_format == "jpg"
        else:
            from realuid.data.pack import read_source_images

            with progress(0, f"decoding {source}") as bar:
                task = bar.add_task("decode", total=None)
                images = read_source_images(source, workers, progress=lambda k: bar.advance(task, k))
            images = images if limit is None else images[:limit]
            kind, lossy = "images", None
        if len(images) < 2:
            raise UserError(f"{source} holds {len(images)} image(s); a covariance needs at least 2", "SOURCE",
                            "give more images")
        if lossy:
            errors.print("warning: the shards hold JPEG images: statistics of lossy images differ from the "
                         "lossless dataset's")
        batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
        with progress(len(images), "Inception features") as bar:
            task = bar.add_task("features", total=len(images))
            features = inception_features(batches, weights, dev, progress=lambda k: bar.advance(task, k))
        mu, sigma = feature_statistics(features)
        write_reference_stats(out, mu, sigma, num_images=len(images), source=str(source.resolve()),
                              source_kind=kind, resolution=np.asarray(images.shape[2:]),
                              feature_extractor=f"torch-fidelity inception-v3-compat 2048 ({INCEPTION_WEIGHTS_NAME})",
                              command=command_line())
    except UserError as err:
        fail(err)
    console.print(f"[green]wrote[/] {out}: mu [{len(mu)}], sigma [{len(mu)}, {len(mu)}] of {len(images)} images "
                  f"{images.shape[3]}x{images.shape[2]}")
