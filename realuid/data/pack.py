"""``realuid data pack``: a folder (or ``.zip``) of images -> WebDataset shards and ``manifest.json``.

Source layout: the images of class ``NAME`` lie anywhere under the first-level
sub-folder ``SRC/NAME/``; images directly in ``SRC`` (and no class folders)
make an unlabelled set. Both at once is refused. Hidden files and folders and
``__MACOSX`` are skipped; other non-image files are counted and skipped. In a
``.zip``, one top folder that holds everything is unwrapped first
(``img_align_celeba/000001.jpg`` -> ``000001.jpg``). Class names are sorted;
a name's position is its label id.

Each image is decoded with PIL, converted to RGB (alpha dropped, palettes
expanded; EXIF orientation ignored), optionally centre-cropped (the largest
central square, or a ``crop_size`` square) and resized to ``resolution``
(Lanczos), then stored losslessly as PNG (default) or as JPEG. Images are
written in a shuffled order (``seed``), so every shard is a random subset and
sample ``KEY`` is the ``KEY``-th image of that order.

Atomic: the shards and the manifest are written into a hidden sibling folder
``.OUT.partial-PID`` and renamed to ``OUT`` only when everything (manifest
last) is written and fsynced. An error removes the partial folder; a killed
pack leaves only ``.OUT.partial-PID`` (no manifest, hidden), which the next
pack to the same ``OUT`` deletes. ``OUT`` itself never exists half-written.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from realuid.data.shards import IMAGE_FORMATS, LAYOUT, LAYOUT_VERSION, MANIFEST_NAME
from realuid.errors import UserError, check_count

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
PACK_FIX = "remove or replace this file (or move it out of SRC), then pack again; nothing was written"


@dataclass(frozen=True)
class SourceImage:
    """One image of the source: its path relative to SRC (POSIX) and its class name (None: no classes)."""

    rel: str
    class_name: str | None


class ImageSource:
    """The images of a folder or a ``.zip``: listing (with the class rule of the module docstring) and reading."""

    def __init__(self, src: str | os.PathLike):
        self.src = Path(src)
        if not self.src.exists():
            raise UserError(f"the image source {self.src} does not exist", "SRC",
                            "give a folder of images (one sub-folder per class, or the images directly) or a .zip")
        self.zip: zipfile.ZipFile | None = None
        self.prefix = ""
        if self.src.is_file():
            if not zipfile.is_zipfile(self.src):
                raise UserError(f"{self.src} is a file but not a .zip archive", "SRC",
                                "give a folder of images or a .zip of one")
            try:
                self.zip = zipfile.ZipFile(self.src)
                names = [n for n in self.zip.namelist() if not n.endswith("/")]
            except (zipfile.BadZipFile, OSError) as err:
                raise UserError(f"{self.src} cannot be read as a zip archive ({err})", "SRC",
                                "re-download or re-create the archive") from None
            names = [n for n in names if not self._hidden(PurePosixPath(n).parts)]
            tops = {PurePosixPath(n).parts[0] for n in names}
            if len(tops) == 1 and all(len(PurePosixPath(n).parts) > 1 for n in names):
                self.prefix = tops.pop() + "/"
            self.files = sorted(n[len(self.prefix):] for n in names)
        else:
            self.files = []
            for folder, dirs, files in os.walk(self.src):
                dirs[:] = sorted(d for d in dirs if not self._hidden((d,)))
                rel_folder = Path(folder).relative_to(self.src)
                self.files += [(rel_folder / f).as_posix() for f in files if not self._hidden((f,))]
            self.files.sort()

    @staticmethod
    def _hidden(parts) -> bool:
        return any(p.startswith(".") or p == "__MACOSX" for p in parts)

    def where(self, rel: str) -> str:
        return f"{self.src}!{self.prefix}{rel}" if self.zip is not None else str(self.src / rel)

    def images(self) -> tuple[list[SourceImage], list[str], list[str]]:
        """(images, sorted class names, skipped non-image files); a UserError for an empty or mixed layout."""
        images, skipped = [], []
        for rel in self.files:
            if not rel.lower().endswith(IMAGE_EXTENSIONS):
                skipped.append(rel)
                continue
            parts = rel.split("/")
            images.append(SourceImage(rel, parts[0] if len(parts) > 1 else None))
        if not images:
            others = f"; it holds {len(skipped)} other file(s), e.g. {skipped[0]}" if skipped else ""
            raise UserError(f"no images in {self.src} (looked for {', '.join(IMAGE_EXTENSIONS)}){others}", "SRC",
                            "give a folder (or .zip) holding images, directly or in one sub-folder per class")
        top = [im for im in images if im.class_name is None]
        if top and len(top) < len(images):
            nested = next(im for im in images if im.class_name is not None)
            raise UserError(f"{self.src} mixes images at its top level ({top[0].rel}, ...) with images in "
                            f"sub-folders ({nested.rel}, ...): the classes are ambiguous", "SRC",
                            "put every image in a class sub-folder (labelled set) or all of them directly in SRC "
                            "(unlabelled set)")
        classes = sorted({im.class_name for im in images if im.class_name is not None})
        return images, classes, skipped

    def read(self, rel: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read(self.prefix + rel)
            return (self.src / rel).read_bytes()
        except (OSError, zipfile.BadZipFile, KeyError) as err:
            raise UserError(f"cannot read {rel} ({getattr(err, 'strerror', None) or err})", self.where(rel),
                            PACK_FIX) from None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


@dataclass(frozen=True)
class Transform:
    """What happens to each image: optional centre crop, optional resize, the stored format."""

    resolution: int | None = None
    center_crop: bool = False
    crop_size: int | None = None
    image_format: str = "png"
    quality: int = 95

    def apply(self, data: bytes, rel: str, where: str):
        """(encoded bytes, (width, height)) of one source image; a UserError naming the file if it cannot be read."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                image = opened.convert("RGB") if opened.mode != "RGB" else opened.copy()
        except Exception as err:   # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            raise UserError(f"{rel} cannot be read as an image ({type(err).__name__}: {err})", where,
                            PACK_FIX) from None
        width, height = image.size
        if self.center_crop or self.crop_size is not None:
            side = min(width, height) if self.crop_size is None else self.crop_size
            if side > min(width, height):
                raise UserError(f"{rel} is {width}x{height}, smaller than the crop {side}x{side}", where,
                                "pass a smaller --crop-size, or remove the small image")
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        if self.resolution is not None and image.size != (self.resolution, self.resolution):
            if image.size[0] != image.size[1]:
                raise UserError(f"{rel} is {image.size[0]}x{image.size[1]}, not square: resizing it to "
                                f"{self.resolution}x{self.resolution} would distort it", where,
                                "pass --center-crop to crop the central square first")
            image = image.resize((self.resolution, self.resolution), Image.LANCZOS)
        buffer = io.BytesIO()
        if self.image_format == "png":
            image.save(buffer, format="PNG", compress_level=6)
        else:
            image.save(buffer, format="JPEG", quality=self.quality, subsampling=0)
        return buffer.getvalue(), image.size


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(out: Path) -> list[Path]:
    """Delete ``.OUT.partial-PID`` folders that killed packs to ``out`` left (their process is gone)."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for path in out.parent.glob(f".{out.name}.partial-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if path.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _check_out(out: Path, src: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file, not a folder", "--out", "give the path of a new folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST_NAME).is_file():
            raise UserError(f"{out} already exists, is not empty and is not a shard folder (no {MANIFEST_NAME})",
                            "--out", "choose a new --out folder, or empty that one yourself")
        if not overwrite:
            raise UserError(f"the shard folder {out} already exists", "--out",
                            "pass --overwrite to replace it, or choose another --out")
    resolved_out, resolved_src = out.resolve(), src.resolve()
    if src.is_dir() and (resolved_out == resolved_src or resolved_src in resolved_out.parents):
        raise UserError(f"--out {out} lies inside SRC {src}: the shards would become part of the source", "--out",
                        "write the shards outside the source folder")


def _in_order(pool: ThreadPoolExecutor, jobs: Iterator, fn: Callable, window: int) -> Iterator:
    """``fn(*job)`` for every job, run in ``pool`` with at most ``window`` in flight, results in job order."""
    pending = []
    for job in jobs:
        pending.append(pool.submit(fn, *job))
        if len(pending) >= window:
            yield pending.pop(0).result()
    while pending:
        yield pending.pop(0).result()


def pack_images(src: str | os.PathLike, out: str | os.PathLike, resolution: int | None = None,
                center_crop: bool = False, crop_size: int | None = None, image_format: str = "png",
                shard_size: int = 5000, quality: int = 95, split: str = "train", seed: int = 0,
                num_workers: int = 4, overwrite: bool = False, command: str = "",
                progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None) -> dict:
    """Pack the images of ``src`` (folder or .zip) into shards under ``out``; returns the manifest (a dict).

    Without ``resolution`` every image (after the optional crop) must have the
    same size; with it, images are resized to ``resolution`` x ``resolution``
    (a non-square image needs ``center_crop`` or ``crop_size``). ``progress``
    is called with 1 after each image is written; ``on_total`` once with the
    number of images. See the module docstring for the layout and atomicity.
    """
    import webdataset as wds

    import realuid
    from realuid.io import atomic_write_text, fsync_folder, sha256_file

    src, out = Path(src), Path(out)
    if image_format not in IMAGE_FORMATS:
        raise UserError(f"unknown image format {image_format!r}", "--format",
                        f"use one of {', '.join(IMAGE_FORMATS)} (png is lossless)")
    if resolution is not None:
        check_count(resolution, "--resolution", 1, 16384)
    if crop_size is not None:
        check_count(crop_size, "--crop-size", 1, 1 << 16)
    shard_size = check_count(shard_size, "--shard-size")
    quality = check_count(quality, "--quality", 1, 100)
    num_workers = check_count(num_workers, "--workers", 1, 256)
    if not split or not split.replace("_", "").replace("-", "").isalnum():
        raise UserError(f"--split {split!r} is not a simple name", "--split", "use e.g. train, test or val")
    source = ImageSource(src)
    try:
        images, classes, skipped = source.images()
        _check_out(out, src, overwrite)
        if on_total is not None:
            on_total(len(images))
        class_ids = {name: i for i, name in enumerate(classes)}
        order = np.random.default_rng(seed).permutation(len(images))
        transform = Transform(resolution, center_crop, crop_size, image_format, quality)

        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(out)
        partial = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        writer = stream = None
        try:
            shards, size, first = [], None, None

            def encode(rel: str):
                return transform.apply(source.read(rel), rel, source.where(rel))

            name, written = None, 0

            def close_shard():
                writer.close()
                stream.flush()
                os.fsync(stream.fileno())
                stream.close()
                path = partial / name
                shards.append({"name": name, "count": written, "bytes": path.stat().st_size,
                               "sha256": sha256_file(path)})

            with ThreadPoolExecutor(num_workers) as pool:
                jobs = ((images[i].rel,) for i in order.tolist())
                for key, (encoded, image_size) in enumerate(_in_order(pool, jobs, encode, 4 * num_workers)):
                    item = images[int(order[key])]
                    if size is None:
                        size, first = image_size, item.rel
                    elif image_size != size:
                        raise UserError(f"the images have different sizes: {first} is {size[0]}x{size[1]}, "
                                        f"{item.rel} is {image_size[0]}x{image_size[1]}", source.where(item.rel),
                                        "pass --resolution R to resize every image to R x R (with --center-crop "
                                        "for non-square images); nothing was written")
                    if writer is None or written == shard_size:
                        if writer is not None:
                            close_shard()
                        name = f"{split}-{len(shards):06d}.tar"
                        stream = open(partial / name, "wb")
                        writer = wds.TarWriter(stream, encoder=False, mtime=0.0, user="realuid", group="realuid")
                        written = 0
                    sample = {"__key__": f"{key:08d}", image_format: encoded}
                    if classes:
                        sample["cls"] = str(class_ids[item.class_name]).encode("ascii")
                    writer.write(sample)
                    written += 1
                    if progress is not None:
                        progress(1)
                close_shard()
            manifest = {
                "layout": LAYOUT, "layout_version": LAYOUT_VERSION, "split": split, "count": len(images),
                "resolution": size[0] if size[0] == size[1] else [size[1], size[0]],
                "height": size[1], "width": size[0], "channels": 3, "classes": classes, "format": image_format,
                "quality": quality if image_format == "jpg" else None,
                "transform": {"resolution": resolution, "center_crop": bool(center_crop), "crop_size": crop_size,
                              "resize": "PIL Lanczos" if resolution is not None else None, "convert": "RGB"},
                "shuffle_seed": seed, "shard_size": shard_size, "shards": shards,
                "skipped_files": len(skipped), "source": str(src.resolve()), "command": command,
                "realuid_version": realuid.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_text(partial / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
            fsync_folder(partial)
            if out.exists():   # an empty folder, or a shard folder replaced with --overwrite
                old = out.parent / f".{out.name}.old-{os.getpid()}"
                os.replace(out, old)
                os.replace(partial, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(partial, out)
            fsync_folder(out.parent)
        except BaseException:
            if writer is not None and not stream.closed:
                try:
                    writer.close()
                    stream.close()
                except (OSError, ValueError):
                    pass
            shutil.rmtree(partial, ignore_errors=True)
            raise
    except OSError as err:
        raise UserError(f"a file operation failed while packing ({err})", str(out),
                        "check free space and permissions; nothing was written") from None
    finally:
        source.close()
    return manifest


def read_source_images(src: str | os.PathLike, num_workers: int = 4, progress=None):
    """Every image of a folder / .zip as uint8 [N, 3, H, W] (RGB, untransformed; all must share one size)."""
    import torch

    source = ImageSource(src)
    try:
        images, _, _ = source.images()

        def decode(rel: str):
            from PIL import Image

            try:
                with Image.open(io.BytesIO(source.read(rel))) as opened:
                    return np.asarray(opened.convert("RGB"))
            except UserError:
                raise
            except Exception as err:
                raise UserError(f"{rel} cannot be read as an image ({type(err).__name__}: {err})",
                                source.where(rel), "remove or replace this file") from None

        arrays, first = [], None
        with ThreadPoolExecutor(num_workers) as pool:
            for item, array in zip(images, _in_order(pool, ((im.rel,) for im in images), decode, 4 * num_workers)):
                if first is None:
                    first = (item.rel, array.shape)
                elif array.shape != first[1]:
                    raise UserError(f"the images have different sizes: {first[0]} is {first[1][1]}x{first[1][0]}, "
                                    f"{item.rel} is {array.shape[1]}x{array.shape[0]}", source.where(item.rel),
                                    "pack them first with `realuid data pack SRC --out SHARDS --resolution R` and "
                                    "compute the statistics of SHARDS")
                arrays.append(array)
                if progress is not None:
                    progress(1)
    finally:
        source.close()
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
