"""Image sets as WebDataset shards written by ``realuid data pack``: the manifest, its checks, and :class:`ImageShards`.

A shard folder holds ``manifest.json`` and ``{split}-NNNNNN.tar`` shards
(uncompressed tar, so that a member can be read at its byte offset). Sample
``KEY`` (eight digits, its index in the folder) is the member ``KEY.png`` (or
``KEY.jpg``), RGB at the manifest's resolution, and ``KEY.cls``, its class id
as ASCII digits, when the folder has classes. The manifest records the count,
resolution, channels, class names (sorted; a name's position is its label id),
image format, each shard's name, sample count, size and sha256, the command
that made it and the realuid version (:func:`read_manifest` checks it).

The sequence of samples that :class:`ImageShards` serves, in memory or
streamed, is defined once (:class:`EpochOrder`): epoch ``e`` is a permutation
of the sample indices drawn from the source's generator (``torch.randperm``),
followed by one flip bit per position (``torch.rand < 1/2``). Under
``TrainingLoop``'s data parallelism every rank draws the same global batch and
reads only its own contiguous rows of it (``next_batch(n, rows=...)``,
:mod:`realuid.engine.distributed`), so the ranks' images are disjoint and
together cover each epoch; a loop that gives
each process its own batches instead binds ``rank``/``world_size``: rank ``r``
of ``W`` then serves positions ``r, r + W, r + 2W, ...`` of each epoch.
The in-memory source indexes its uint8 array with those indices; the streaming
reader fetches the same indices from the shards (grouped by shard, each image
read at its offset and decoded), so both give the same batches bit for bit.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from realuid.components import register
from realuid.data.base import ALL_ROWS, Batch, DataSource
from realuid.errors import UserError, check_count

MANIFEST_NAME = "manifest.json"
LAYOUT = "realuid-image-shards"
LAYOUT_VERSION = 1
IMAGE_FORMATS = ("png", "jpg")
ROOT_ENV = "REALUID_DATA"
#: bytes in the ``max_memory_gb`` unit (decimal gigabytes)
GB = 10**9
REPACK_FIX = ("re-create the folder with `realuid data pack SRC --out FOLDER` or restore it from a good copy "
              "(`realuid data info FOLDER` checks every shard)")


# -- the manifest ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest lists it."""

    name: str
    count: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardManifest:
    """The checked contents of a shard folder's ``manifest.json``."""

    folder: Path
    split: str
    count: int
    height: int
    width: int
    channels: int
    classes: tuple[str, ...]
    image_format: str
    shards: tuple[ShardInfo, ...]
    raw: dict

    @property
    def resolution(self) -> int | None:
        """The side of the (square) images; None for non-square ones."""
        return self.height if self.height == self.width else None

    @property
    def decoded_bytes(self) -> int:
        """Bytes of every image decoded as uint8: ``count * channels * height * width``."""
        return self.count * self.channels * self.height * self.width

    @property
    def starts(self) -> np.ndarray:
        """Index of each shard's first sample (and the total count at the end)."""
        return np.concatenate([[0], np.cumsum([s.count for s in self.shards])]).astype(np.int64)


def _field(raw: dict, key: str, kind, where: str, fix: str = REPACK_FIX):
    if key not in raw:
        raise UserError(f"the manifest has no {key!r} entry", where, fix)
    value = raw[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"the manifest's {key!r} is {value!r}, not an integer", where, fix)
    if kind is not int and not isinstance(value, kind):
        raise UserError(f"the manifest's {key!r} is {value!r}, not a {kind.__name__}", where, fix)
    return value


def read_manifest(folder: str | os.PathLike) -> ShardManifest:
    """Read and check ``folder/manifest.json``; a :class:`UserError` naming the problem otherwise."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    where = str(path)
    if not folder.is_dir():
        raise UserError(f"the shard folder {folder} does not exist" if not folder.exists() else
                        f"{folder} is a file, not a shard folder", str(folder),
                        "give the folder `realuid data pack` wrote (it holds manifest.json and *.tar shards)")
    if not path.is_file():
        raise UserError(f"{folder} has no {MANIFEST_NAME}, so it is not a folder `realuid data pack` wrote "
                        "(or its packing did not finish)", str(folder),
                        "pack the images with `realuid data pack SRC --out FOLDER`")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} cannot be read as JSON ({err})", where, REPACK_FIX) from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} does not hold a JSON object", where, REPACK_FIX)
    if raw.get("layout") != LAYOUT:
        hint = (" (it looks like the CIFAR-10 folder's own manifest: read that folder with CIFAR10Shards)"
                if all(isinstance(v, dict) and "sha256" in v for v in raw.values()) and raw else "")
        raise UserError(f"{path} is not a manifest of `realuid data pack` (its 'layout' is "
                        f"{raw.get('layout')!r}, expected {LAYOUT!r}){hint}", where,
                        "pack the images with `realuid data pack SRC --out FOLDER`")
    version = _field(raw, "layout_version", int, where)
    if version > LAYOUT_VERSION:
        raise UserError(f"{path} has layout version {version}; this realuid reads up to {LAYOUT_VERSION}", where,
                        "upgrade realuid, or re-pack the images with this version")
    count = _field(raw, "count", int, where)
    height, width = _field(raw, "height", int, where), _field(raw, "width", int, where)
    channels = _field(raw, "channels", int, where)
    classes = _field(raw, "classes", list, where)
    image_format = _field(raw, "format", str, where)
    split = _field(raw, "split", str, where)
    if count < 1 or height < 1 or width < 1 or channels != 3:
        raise UserError(f"{path} describes {count} images of {channels} x {height} x {width}; expected at least "
                        "one RGB image", where, REPACK_FIX)
    if image_format not in IMAGE_FORMATS:
        raise UserError(f"{path} names the image format {image_format!r}, not one of {', '.join(IMAGE_FORMATS)}",
                        where, REPACK_FIX)
    if not all(isinstance(c, str) for c in classes) or list(classes) != sorted(set(classes)):
        raise UserError(f"{path}: 'classes' must be distinct names in sorted order, got {classes!r}", where,
                        REPACK_FIX)
    shards = []
    for entry in _field(raw, "shards", list, where):
        if not isinstance(entry, dict):
            raise UserError(f"{path}: a 'shards' entry is {entry!r}, not an object", where, REPACK_FIX)
        name = _field(entry, "name", str, where)
        if Path(name).name != name or not name.endswith(".tar"):
            raise UserError(f"{path}: shard name {name!r} is not a .tar file name in the folder", where, REPACK_FIX)
        shards.append(ShardInfo(name, _field(entry, "count", int, where), _field(entry, "bytes", int, where),
                                _field(entry, "sha256", str, where)))
    if sum(s.count for s in shards) != count or not shards or min(s.count for s in shards) < 1:
        raise UserError(f"{path}: its shards hold {sum(s.count for s in shards)} samples in all, its 'count' says "
                        f"{count}", where, REPACK_FIX)
    return ShardManifest(folder, split, count, height, width, channels, tuple(classes), image_format,
                         tuple(shards), raw)


def locate(root: str | os.PathLike | None, split: str | None, binding: str = "ImageShards.root") -> Path:
    """The folder holding the manifest: ``root`` itself, or ``root/split`` (root default ``$REALUID_DATA``)."""
    where = binding
    if root is None:
        if not os.environ.get(ROOT_ENV):
            raise UserError(f"no shard folder given: {binding} is None and ${ROOT_ENV} is not set", binding,
                            f"bind {binding} = '/path/to/shards' (a folder `realuid data pack` wrote) or "
                            f"export {ROOT_ENV}=/path/to/shards")
        root = os.environ[ROOT_ENV]
        where = f"{binding} (None: ${ROOT_ENV} = {root!r})"
    folder = Path(root)
    if (folder / MANIFEST_NAME).is_file() or split is None or not (folder / split / MANIFEST_NAME).is_file():
        if not folder.is_dir():
            raise UserError(f"the shard folder {folder} does not exist" if not folder.exists() else
                            f"{folder} is a file, not a shard folder", where,
                            f"pack the images first (`realuid data pack SRC --out {folder}`), or bind {binding} "
                            f"(or ${ROOT_ENV}) to the folder it wrote")
        return folder
    return folder / split


# -- checking shards -------------------------------------------------------------------------------------------------
def shard_problem(manifest: ShardManifest, shard: ShardInfo, checksum: bool = True,
                  data: bytes | None = None) -> str | None:
    """What is wrong with one shard file (missing, wrong size, wrong sha256), or None when it matches the manifest."""
    path = manifest.folder / shard.name
    if data is None:
        if not path.is_file():
            return f"shard {shard.name} is missing"
        size = path.stat().st_size
    else:
        size = len(data)
    if size != shard.bytes:
        return (f"shard {shard.name} has {size:,} bytes, the manifest says {shard.bytes:,} "
                f"({'truncated' if size < shard.bytes else 'longer than written'})")
    if checksum:
        if data is not None:
            digest = hashlib.sha256(data).hexdigest()
        else:
            from realuid.io import sha256_file

            digest = sha256_file(path)
        if digest != shard.sha256:
            return (f"shard {shard.name} is corrupted: its sha256 {digest[:16]}... differs from the manifest's "
                    f"{shard.sha256[:16]}... (its bytes changed after packing)")
    return None


def check_shard(manifest: ShardManifest, shard: ShardInfo, checksum: bool = True, data: bytes | None = None) -> None:
    """Raise a :class:`UserError` naming the shard when :func:`shard_problem` finds something."""
    problem = shard_problem(manifest, shard, checksum, data)
    if problem is not None:
        raise UserError(problem, str(manifest.folder / shard.name), REPACK_FIX)


@dataclass
class ShardIndex:
    """Where each sample of one shard lies: byte offset and size of its image member, and its label (-1: none)."""

    offsets: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray


def scan_shard(fileobj, manifest: ShardManifest, shard: ShardInfo, limit: int | None = None) -> ShardIndex:
    """Walk a shard's tar headers (no image is decoded) and check the sample layout against the manifest."""
    where = str(manifest.folder / shard.name)
    image_ext, labelled = manifest.image_format, bool(manifest.classes)
    wanted = shard.count if limit is None else min(limit, shard.count)
    offsets, sizes, labels = [], [], []
    current, members = None, {}

    def finish():
        if current is None:
            return
        if image_ext not in members:
            raise UserError(f"sample {current!r} of shard {shard.name} has no {image_ext} member (members: "
                            f"{', '.join(sorted(members)) or 'none'})", where, REPACK_FIX)
        if labelled:
            if "cls" not in members:
                raise UserError(f"sample {current!r} of shard {shard.name} has no cls member (its class id)", where,
                                REPACK_FIX)
            text = members["cls"]
            label = int(text) if text.strip().isdigit() else -1
            if not 0 <= label < len(manifest.classes):
                raise UserError(f"sample {current!r} of shard {shard.name} has class {text!r}, not an id in "
                                f"0..{len(manifest.classes) - 1}", where, REPACK_FIX)
            labels.append(label)
        else:
            labels.append(-1)
        offsets.append(members[image_ext][0])
        sizes.append(members[image_ext][1])

    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition("/")[2].partition(".")
                if key != current:
                    finish()
                    if len(offsets) >= wanted:
                        break
                    current, members = key, {}
                if ext == "cls" and labelled:
                    members["cls"] = tar.extractfile(member).read().decode("ascii", "replace")
                else:
                    members[ext] = (member.offset_data, member.size)
            else:
                finish()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UserError(f"shard {shard.name} cannot be read as a tar archive ({type(err).__name__}: {err})", where,
                        REPACK_FIX) from None
    if len(offsets) != wanted:
        raise UserError(f"shard {shard.name} holds {len(offsets)} samples, the manifest says {shard.count}", where,
                        REPACK_FIX)
    return ShardIndex(np.asarray(offsets, np.int64), np.asarray(sizes, np.int64), np.asarray(labels, np.int64))


def decode_image(data, manifest: ShardManifest, what: str, where: str) -> np.ndarray:
    """Decode one stored image to uint8 [H, W, 3], checking its format, mode and size against the manifest."""
    from PIL import Image

    formats = ["PNG"] if manifest.image_format == "png" else ["JPEG"]
    try:
        with Image.open(io.BytesIO(data), formats=formats) as image:
            image.load()
            mode, size = image.mode, image.size
            array = np.array(image)            # a writable copy
    except Exception as err:   # PIL raises OSError, SyntaxError, ValueError, ... for damaged data
        raise UserError(f"{what} cannot be decoded as {manifest.image_format.upper()} ({type(err).__name__}: {err})",
                        where, REPACK_FIX) from None
    if mode != "RGB" or size != (manifest.width, manifest.height):
        raise UserError(f"{what} is a {size[0]}x{size[1]} {mode} image; the manifest says "
                        f"{manifest.width}x{manifest.height} RGB", where, REPACK_FIX)
    return array


def decode_shard_into(manifest: ShardManifest, shard: ShardInfo, start: int, count: int, images: torch.Tensor,
                      labels: torch.Tensor, verify: bool) -> None:
    """Read one whole shard (checking its size, and its sha256 when ``verify``), decode its first ``count`` images
    into ``images[start:start + count]`` (uint8 NCHW) and their labels into ``labels``."""
    path = manifest.folder / shard.name
    if not path.is_file():
        raise UserError(f"shard {shard.name} is missing", str(path), REPACK_FIX)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read shard {shard.name} ({err.strerror or err})", str(path), REPACK_FIX) from None
    check_shard(manifest, shard, verify, data)
    index = scan_shard(io.BytesIO(data), manifest, shard, count)
    view = memoryview(data)
    for j, (offset, size) in enumerate(zip(index.offsets.tolist(), index.sizes.tolist())):
        pixels = decode_image(view[offset:offset + size], manifest, f"image {j} of shard {shard.name}", str(path))
        images[start + j] = torch.from_numpy(pixels).permute(2, 0, 1)
    labels[start:start + count] = torch.from_numpy(index.labels)


def shard_plan(manifest: ShardManifest, count: int) -> list[tuple[ShardInfo, int, int]]:
    """(shard, first global index, how many of its samples) for the first ``count`` samples."""
    plan, start = [], 0
    for shard in manifest.shards:
        if start >= count:
            break
        take = min(shard.count, count - start)
        plan.append((shard, start, take))
        start += take
    return plan


def read_images(manifest: ShardManifest, count: int | None = None, num_workers: int = 4, verify: bool = True,
                progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` (default all) images as uint8 [N, 3, H, W] and labels int64 [N] (-1 without classes).

    Shards are decoded in parallel threads (PIL releases the GIL while it
    decodes); the result does not depend on ``num_workers``. ``progress`` is
    called with the number of images of each finished shard.
    """
    count = manifest.count if count is None else min(count, manifest.count)
    images = torch.empty((count, manifest.channels, manifest.height, manifest.width), dtype=torch.uint8)
    labels = torch.empty(count, dtype=torch.int64)
    plan = shard_plan(manifest, count)
    workers = max(1, min(num_workers, len(plan), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(decode_shard_into, manifest, shard, start, take, images, labels, verify)
                   for shard, start, take in plan]
        try:
            for future, (_, _, take) in zip(futures, plan):
                future.result()
                if progress is not None:
                    progress(take)
        finally:
            for future in futures:
                future.cancel()
    return images, labels


# -- the shared order ------------------------------------------------------------------------------------------------
class EpochOrder:
    """The sample sequence of one rank: epoch permutations drawn from a seeded generator, split across ranks.

    At the start of epoch ``e`` the generator (state ``S_e``) draws
    ``perm = randperm(N)`` then ``flip = rand(N) < 1/2``, leaving state
    ``S_{e+1}``. Rank ``r`` of ``W`` serves ``perm[r::W]`` (with the flips of
    those positions) in order, then moves to epoch ``e + 1``; a batch may span
    two epochs. Ranks with the same seed therefore see disjoint samples that
    together cover each epoch. The state is ``(epoch, position, S_epoch)``.
    """

    def __init__(self, count: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.count, self.rank, self.world_size = count, rank, world_size
        self.seed(seed)

    def seed(self, seed: int) -> None:
        self.epoch, self.position = 0, 0
        self.start_state = torch.Generator().manual_seed(seed).get_state()
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _draw(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, flips) of this rank in ``epoch`` (>= the current one; later ones drawn in turn and cached)."""
        for e in range(self.epoch, epoch + 1):
            if e in self._cache:
                continue
            generator = torch.Generator()
            generator.set_state(self.start_state if e == self.epoch else self._cache[e - 1][2])
            perm = torch.randperm(self.count, generator=generator)
            flips = torch.rand(self.count, generator=generator) < 0.5
            self._cache[e] = (perm[self.rank::self.world_size], flips[self.rank::self.world_size],
                              generator.get_state())
        indices, flips, _ = self._cache[epoch]
        return indices, flips

    def _walk(self, n: int, advance: bool) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, position, parts = self.epoch, self.position, []
        while n > 0:
            indices, flips = self._draw(epoch)
            if position >= len(indices):
                epoch, position = epoch + 1, 0
                continue
            take = min(n, len(indices) - position)
            parts.append((indices[position:position + take], flips[position:position + take]))
            position += take
            n -= take
        if advance and epoch != self.epoch:
            self.start_state = self._cache[epoch - 1][2]     # the state after the previous epoch's draws
            self._cache = {e: v for e, v in self._cache.items() if e >= epoch}
        if advance:
            self.epoch, self.position = epoch, position
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n`` (indices, flips), advancing the position."""
        return self._walk(n, True)

    def peek(self, n: int) -> torch.Tensor:
        """The indices :meth:`take` would return next, without advancing."""
        return self._walk(n, False)[0]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "generator": self.start_state.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.start_state = state["generator"].clone()
        self._cache = {}


# -- streaming -------------------------------------------------------------------------------------------------------
class ShardReader:
    """Random access to the images of a shard folder: an index of member offsets, and reads grouped by shard.

    The index is built once by walking every tar header (no image is decoded);
    :meth:`fetch` reads the wanted images with ``os.pread`` at their offsets,
    sorted by shard and offset, and decodes them in a thread pool.
    """

    def __init__(self, manifest: ShardManifest, count: int, num_workers: int = 4, verify: bool = True):
        self.manifest, self.count = manifest, count
        self.plan = shard_plan(manifest, count)
        self.paths = [manifest.folder / shard.name for shard, _, _ in self.plan]
        self.starts = np.asarray([start for _, start, _ in self.plan] + [count], np.int64)
        offsets, sizes, labels = [], [], []
        for (shard, _, take), path in zip(self.plan, self.paths):
            check_shard(manifest, shard, checksum=verify)
            with open(path, "rb") as f:
                index = scan_shard(f, manifest, shard, take)
            offsets.append(index.offsets)
            sizes.append(index.sizes)
            labels.append(index.labels)
        self.offsets, self.sizes = np.concatenate(offsets), np.concatenate(sizes)
        self.labels = torch.from_numpy(np.concatenate(labels))
        self.num_workers = max(1, num_workers)
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def _fd(self, shard: int) -> int:
        with self._lock:
            if shard not in self._fds:
                self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
            return self._fds[shard]

    def _read_decode(self, positions: np.ndarray, index: np.ndarray, shard_of: np.ndarray, out: torch.Tensor) -> None:
        for p in positions.tolist():
            i, s = int(index[p]), int(shard_of[p])
            path = self.paths[s]
            try:
                data = os.pread(self._fd(s), int(self.sizes[i]), int(self.offsets[i]))
            except OSError as err:
                raise UserError(f"cannot read shard {path.name} ({err.strerror or err})", str(path),
                                REPACK_FIX) from None
            if len(data) != self.sizes[i]:
                raise UserError(f"shard {path.name} ends inside image {i - self.starts[s]} (truncated after the "
                                "index was built)", str(path), REPACK_FIX)
            pixels = decode_image(data, self.manifest, f"image {i - self.starts[s]} of shard {path.name}", str(path))
            out[p] = torch.from_numpy(pixels).permute(2, 0, 1)

    def fetch(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 [n, 3, H, W] images of the global ``indices``, in the order given."""
        index = indices.numpy()
        shard_of = np.searchsorted(self.starts, index, side="right") - 1
        order = np.lexsort((self.offsets[index], shard_of))       # by shard, then by position in the file
        m = self.manifest
        out = torch.empty((len(index), m.channels, m.height, m.width), dtype=torch.uint8)
        chunks = [c for c in np.array_split(order, min(len(order), 2 * self.num_workers)) if len(c)]
        if self.num_workers == 1 or len(chunks) == 1:
            for chunk in chunks:
                self._read_decode(chunk, index, shard_of, out)
            return out
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_workers)
        futures = [self._pool.submit(self._read_decode, chunk, index, shard_of, out) for chunk in chunks]
        for future in futures:
            future.result()
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds = {}

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def copies_on(cache: dict, device: torch.device | str, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` moved to ``device`` once and kept in ``cache`` (keyed by device): batches index them there."""
    key = str(torch.device(device))
    if key not in cache:
        cache[key] = tuple(t.to(device) for t in tensors)
    return cache[key]


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels {0..255} -> float in [-1, 1]: ``x / 127.5 - 1``."""
    return images_uint8.float() / 127.5 - 1.0


# -- the data source -------------------------------------------------------------------------------------------------
@register("data")
class ImageShards(DataSource):
    """Images from a shard folder `realuid data pack` wrote, any resolution: epoch-shuffled, resumable batches.

    **Order** (:class:`EpochOrder`): each epoch is a permutation of the images
    drawn from the source's own ``torch.Generator``, with one flip bit per
    position. The state is (epoch, position, generator state at the epoch's
    start): a restored source continues bit for bit.

    **Data parallelism**: ``TrainingLoop`` seeds every rank alike, each rank
    asks for its contiguous rows of the global batch
    (:meth:`realuid.engine.distributed.Distributed.batch_rows`), so within an epoch
    the ranks' images are disjoint and together cover it, and a run resumed on
    another number of processes continues the same sequence; leave ``rank`` and
    ``world_size`` unset there. A loop that gives each process its own batches
    binds them: rank ``r`` of ``W`` then serves positions ``r, r + W, ...`` of
    every epoch permutation (disjoint, covering the epoch, same seed on every
    rank). In streaming mode each rank reads and decodes only its rows (and
    prefetches the same rows of the next batch).

    **Memory rule**: the decoded set takes ``count * 3 * H * W`` bytes (uint8).
    When that is at most ``max_memory_gb * 10^9`` every image is decoded once,
    held in memory (and copied once to each device a batch is asked on), and
    batches index it. Otherwise the images are streamed: an index of member
    offsets is built once, and each batch reads its images from the shards
    (sorted by shard and offset, decoded by ``num_workers`` threads, the next
    batch prefetched in the background). Both modes serve the same batches for
    the same seed, so a run may switch between them on resume. With data
    parallelism each process holds its own copy in memory mode.

    ``x = pixels / 127.5 - 1`` in [-1, 1], NCHW float32; labels int64 when
    ``conditional``.

    Usage::

        data = ImageShards(root="shards/celeba64", hflip=True)       # the folder `realuid data pack` wrote
        data.seed(0)
        batch = data.next_batch(256, "cuda")                           # batch.x [256, 3, 64, 64]

    Args:
        root: the shard folder (holding manifest.json), or a folder with one
            sub-folder per split; default ``$REALUID_DATA``.
        split: which split to read when ``root`` holds split sub-folders; a
            folder's own manifest must name this split.
        resolution: expected image side; None takes the manifest's. A mismatch is an error.
        hflip: random horizontal flips (a fixed bit per epoch position, drawn with the permutation).
        conditional: return class labels (the manifest's classes, sorted names -> ids 0..K-1).
        max_memory_gb: decoded size (10^9 bytes) up to which the set is held in memory;
            0 always streams.
        limit: use only the first ``limit`` images of the folder (smoke tests); None: all.
        num_workers: decoding threads.
        verify: check every shard's sha256 against the manifest before use (reads
            each byte once; sizes are always checked).
        rank, world_size: serve only positions ``rank, rank + world_size, ...`` of each epoch
            (for per-process batches; TrainingLoop slices the global batch itself: leave 0 and 1).
        seed: seed of the order (the trainer re-seeds it with :meth:`seed`).
    """

    def __init__(self, root: str | None = None, split: str | None = "train", resolution: int | None = None,
                 hflip: bool = False, conditional: bool = False, max_memory_gb: float = 16.0,
                 limit: int | None = None, num_workers: int = 4, verify: bool = True, rank: int = 0,
                 world_size: int = 1, seed: int = 0):
        from realuid.errors import check_range

        folder = locate(root, split)
        manifest = read_manifest(folder)
        where = "ImageShards"
        if split is not None and manifest.split != split:
            raise UserError(f"the shard folder {folder} holds the {manifest.split!r} split, not {split!r}",
                            f"{where}.split", f"bind {where}.split = {manifest.split!r} (or None), or point "
                            f"{where}.root at the {split!r} folder")
        if resolution is not None:
            check_count(resolution, f"{where}.resolution")
            if (manifest.height, manifest.width) != (resolution, resolution):
                raise UserError(f"{where}.resolution = {resolution}, but {folder} holds {manifest.width}x"
                                f"{manifest.height} images", f"{where}.resolution",
                                f"bind {where}.resolution = {manifest.resolution or None} (None takes the "
                                f"manifest's), or re-pack the images with `realuid data pack SRC --out FOLDER "
                                f"--resolution {resolution}`")
        if conditional and not manifest.classes:
            raise UserError(f"{where}.conditional = True, but {folder} has no classes (its images sat directly in "
                            "the packed folder)", f"{where}.conditional",
                            f"bind {where}.conditional = False, or pack a folder with one sub-folder per class")
        if limit is not None:
            check_count(limit, f"{where}.limit")
        check_range(max_memory_gb, f"{where}.max_memory_gb", 0.0)
        self.num_workers = check_count(num_workers, f"{where}.num_workers")
        self.rank, self.world_size = int(rank), check_count(world_size, f"{where}.world_size")
        if not 0 <= self.rank < self.world_size:
            raise UserError(f"rank {rank} is outside 0..{world_size - 1}", f"{where}.rank", "check RANK / WORLD_SIZE")

        self.manifest, self.root = manifest, str(folder)     # ``root``: the resolved folder, read by image metrics
        self.count = manifest.count if limit is None else min(limit, manifest.count)
        if self.count < self.world_size:
            raise UserError(f"{self.count} images cannot be split over {self.world_size} processes", f"{where}.limit",
                            "use more images than processes")
        self.shape = (manifest.channels, manifest.height, manifest.width)
        self.classes = manifest.classes
        self.conditional, self.hflip = conditional, hflip
        self.num_classes = len(manifest.classes) if conditional else 0
        self.decoded_bytes = self.count * int(np.prod(self.shape))
        self.streaming = self.decoded_bytes > max_memory_gb * GB
        self.order = EpochOrder(self.count, self.rank, self.world_size, seed)
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._prefetch: tuple[tuple, Future] | None = None
        self._prefetcher: ThreadPoolExecutor | None = None
        if self.streaming:
            self.images = None
            self.reader = ShardReader(manifest, self.count, self.num_workers, verify)
            self.labels = self.reader.labels
        else:
            self.reader = None
            self.images, self.labels = read_images(manifest, self.count, self.num_workers, verify)

    def __len__(self) -> int:
        return self.count

    def seed(self, seed: int) -> None:
        self._drop_prefetch()
        self.order.seed(seed)

    def _arrays_on(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        return copies_on(self._on_device, device, self.images, self.labels)

    def _drop_prefetch(self) -> None:
        if self._prefetch is not None:
            self._prefetch[1].cancel()
            self._prefetch = None

    def _stream(self, n: int, rows: slice, index: torch.Tensor, key: tuple) -> torch.Tensor:
        """Pixels of ``index`` (the prefetched ones when they match), then start fetching the same rows of the
        next batch of ``n``."""
        if self._prefetch is not None and self._prefetch[0] == key:
            pixels = self._prefetch[1].result()
        else:
            self._drop_prefetch()
            pixels = self.reader.fetch(index)
        self._prefetch = None
        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(1)
        following = self.order.peek(n)[rows]
        self._prefetch = ((self.order.epoch, self.order.position, n, rows),
                          self._prefetcher.submit(self.reader.fetch, following))
        return pixels

    def next_batch(self, n: int, device: torch.device | str = "cpu", rows: slice = ALL_ROWS) -> Batch:
        check_count(n, "the batch size")
        key = (self.order.epoch, self.order.position, n, rows)
        index, flips = self.order.take(n)
        index, flips = index[rows], flips[rows]
        if self.streaming:
            x = self._stream(n, rows, index, key).to(device, non_blocking=True)
            labels = self.labels[index].to(device) if self.conditional else None
        else:
            images, all_labels = self._arrays_on(device)
            on_device = index.to(images.device, non_blocking=True)
            x = images[on_device]
            labels = all_labels[on_device] if self.conditional else None
        if self.hflip:
            x = torch.where(flips.to(x.device, non_blocking=True)[:, None, None, None], x.flip(-1), x)
        return Batch(to_unit_range(x), labels)

    def state_dict(self) -> dict:
        return {**self.order.state_dict(), "num_images": self.count, "world_size": self.world_size,
                "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("num_images", self.count)) != self.count:
            raise UserError(f"the checkpoint's data stream ran over {state['num_images']} images, this source holds "
                            f"{self.count}", "ImageShards.limit",
                            "resume with the same shard folder, split and limit as the run that wrote the checkpoint")
        if "epoch" not in state:
            raise UserError("the checkpoint's data state is not an ImageShards state (no epoch/position)",
                            "ImageShards", "resume with the data source the run was started with")
        self._drop_prefetch()
        self.order.load_state_dict(state)

    def close(self) -> None:
        """Stop the background threads and close the shard files (streaming mode)."""
        self._drop_prefetch()
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True)
            self._prefetcher = None
        if self.reader is not None:
            self.reader.close()
