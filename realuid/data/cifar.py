"""CIFAR-10 from WebDataset shards, decoded once into memory.

Layout on disk (see ``shared/data/cifar10/README.md``): ``{split}-NNNNNN.tar.gz``
shards whose samples are ``KEY.jpg`` (32x32 RGB) and ``KEY.cls`` (class index).

Every image is decoded once, shard by shard (a DataLoader over the shard list,
several workers, order fixed by the list so the result does not depend on the
number of workers), into one uint8 tensor [N, 3, 32, 32]: 150 MB for the 50k
training images. Batches are then random indices into it, so training pays no
per-step decoding and the stream position is just a generator state.

This is the CIFAR-10 preset of the image data: it reads the shared folder's
own layout (gzip shards of JPEGs, its own manifest) and keeps its i.i.d.
sampler (indices with replacement), so CIFAR runs stay bit-identical to those
made before :class:`~realuid.data.shards.ImageShards` existed. Images of any
other set (or CIFAR-10 itself, packed losslessly) go through ``realuid data
pack`` and :class:`~realuid.data.shards.ImageShards` (epoch order, streaming).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from realuid.data.base import ALL_ROWS, Batch, DataSource
from realuid.data.shards import copies_on, to_unit_range
from realuid.errors import UserError
from realuid.components import register

IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
ROOT_ENV = "REALUID_CIFAR10"
ROOT_FIX = (f"set the environment variable {ROOT_ENV}=/path/to/cifar10 or bind CIFAR10Shards.root "
            "to the folder holding train-000000.tar.gz ... test-000001.tar.gz")


def default_root() -> Path:
    """The shard folder: ``$REALUID_CIFAR10``, else ``../shared/data/cifar10``, else ``/work/shared/data/cifar10``."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV])
    nearby = Path.cwd().parent / "shared" / "data" / "cifar10"
    return nearby if nearby.is_dir() else Path("/work/shared/data/cifar10")


def find_shards(root: str | os.PathLike | None, split: str) -> list[Path]:
    """The sorted shard files of ``split`` under ``root``; a UserError when there are none."""
    if split not in ("train", "test"):
        raise UserError(f"unknown CIFAR-10 split {split!r}", "CIFAR10Shards.split", "use 'train' or 'test'")
    folder = Path(root) if root is not None else default_root()
    where = f"CIFAR10Shards.root = {str(folder)!r}" + ("" if root is not None else " (the default)")
    if not folder.is_dir():
        raise UserError(f"the CIFAR-10 shard folder {folder} does not exist", where, ROOT_FIX)
    shards = sorted(p for p in folder.iterdir()
                    if p.name.startswith(f"{split}-") and p.name.endswith((".tar", ".tar.gz", ".tgz")))
    if not shards:
        raise UserError(f"no {split} shards ({split}-NNNNNN.tar or .tar.gz) in {folder}", where, ROOT_FIX)
    return shards


class ShardDecoder(torch.utils.data.Dataset):
    """Item i = every sample of shard i, decoded: (uint8 images [n, 3, 32, 32], int64 labels [n]).

    A bad shard gives a ``("error", what, where, fix)`` tuple instead of raising,
    so that the main process can raise a clean :class:`UserError` (an exception
    raised inside a DataLoader worker comes back wrapped in a traceback).
    """

    def __init__(self, shards: list[Path], limit: int | None = None):
        self.shards, self.limit = shards, limit

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int):
        try:
            return decode_shard(self.shards[i], self.limit)
        except UserError as err:
            return ("error", err.what, err.where, err.fix)


def decode_shard(shard: Path, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode (at most ``limit``) samples of one shard with webdataset's ``rgb8`` decoder."""
    import webdataset as wds

    fix_shard = "rebuild or remove this shard (see shared/data/cifar10/README.md for the expected layout)"
    images, labels = [], []
    # one shard per call, already split between workers by the caller: no splitting inside webdataset
    dataset = wds.WebDataset(str(shard), shardshuffle=False, empty_check=False,
                             nodesplitter=None, workersplitter=None)
    stream = iter(dataset.decode("rgb8"))
    while limit is None or len(images) < limit:
        try:
            sample = next(stream)
        except StopIteration:
            break
        except Exception as err:  # a corrupt archive, or a member that does not decode (webdataset.DecodingError)
            member = f"{err.key}.{err.k}" if getattr(err, "k", None) else None
            cause = err.__cause__ or err.__context__ if member else err
            what = (f"member {member!r} is not a decodable image ({type(cause).__name__}: {cause})" if member
                    else f"{type(err).__name__}: {err}")
            raise UserError(f"cannot read or decode a sample of shard {shard.name}: {what}",
                            str(shard), fix_shard) from None
        key = sample.get("__key__", "?")
        image = sample.get("jpg")
        if image is None:
            members = sorted(k for k in sample if not k.startswith("__"))
            raise UserError(f"sample {key!r} has no jpg member (members: {', '.join(members) or 'none'})",
                            str(shard), fix_shard)
        if not isinstance(image, np.ndarray):
            raise UserError(f"the jpg member of sample {key!r} is not an image", str(shard), fix_shard)
        if image.shape != (32, 32, 3):
            raise UserError(f"image {key!r} has shape {tuple(image.shape)}, expected (32, 32, 3) (32x32 RGB)",
                            str(shard), fix_shard)
        if "cls" not in sample:
            raise UserError(f"sample {key!r} has no cls member (its class label)", str(shard), fix_shard)
        label = int(sample["cls"]) if not isinstance(sample["cls"], bytes) else int(sample["cls"].decode())
        if not 0 <= label < NUM_CLASSES:
            raise UserError(f"sample {key!r} has class {label}, outside 0..{NUM_CLASSES - 1}", str(shard), fix_shard)
        images.append(image)
        labels.append(label)
    if not images:
        raise UserError(f"shard {shard.name} holds no samples", str(shard), fix_shard)
    return (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
            torch.tensor(labels, dtype=torch.int64))


def shard_fingerprint(shards: list[Path]) -> str:
    """A short hash of the shards' names, sizes and modification times (names a cache file)."""
    digest = hashlib.sha1()
    for shard in shards:
        stat = shard.stat()
        digest.update(f"{shard.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:12]


def as_is(item):
    """DataLoader collate function that leaves an item untouched."""
    return item


def progress_bar(*columns):
    """A transient rich progress bar on stderr, silent when stderr is not a terminal (logs, CI)."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)


def decode_all(shards: list[Path], limit: int | None, num_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode shards in order (DataLoader workers in parallel) until ``limit`` images; rich progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    loader = torch.utils.data.DataLoader(ShardDecoder(shards, limit), batch_size=None, shuffle=False,
                                         num_workers=min(num_workers, len(shards), os.cpu_count() or 1),
                                         collate_fn=as_is)
    images, labels, count = [], [], 0
    columns = (TextColumn("decoding CIFAR-10 {task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("shards"), TimeElapsedColumn())
    with progress_bar(*columns) as progress:
        task = progress.add_task(shards[0].name.split("-")[0], total=len(shards))
        for item in loader:
            if isinstance(item, tuple) and len(item) == 4 and item[0] == "error":
                raise UserError(*item[1:])
            images.append(item[0])
            labels.append(item[1])
            count += len(item[0])
            progress.advance(task)
            if limit is not None and count >= limit:
                break
    images_all, labels_all = torch.cat(images), torch.cat(labels)
    if limit is not None:
        images_all, labels_all = images_all[:limit], labels_all[:limit]
    return images_all, labels_all


def read_cifar10(root: str | os.PathLike | None = None, split: str = "train", limit: int | None = None,
                 num_workers: int = 4, cache_dir: str | os.PathLike | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split as uint8 [N, 3, 32, 32] and their labels int64 [N] (for training or reference statistics).

    With ``cache_dir``, the decoded arrays are kept in
    ``cache_dir/cifar10-{split}-{N or all}-{fingerprint}.npz`` (written
    atomically) and read from there next time; the fingerprint changes when a
    shard does.
    """
    if limit is not None and limit < 1:
        raise UserError(f"limit = {limit} must be a positive number of images", "CIFAR10Shards.limit",
                        "bind limit to None (every image) or to a positive integer")
    shards = find_shards(root, split)
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"cifar10-{split}-{limit or 'all'}-{shard_fingerprint(shards)}.npz"
        if cache.is_file():
            with np.load(cache) as arrays:
                return torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"])
    images, labels = decode_all(shards, limit, num_workers)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, images=images.numpy(), labels=labels.numpy())
        os.replace(tmp, cache)
    return images, labels


@register("data")
class CIFAR10Shards(DataSource):
    """CIFAR-10 (32x32 RGB, 10 classes) from WebDataset shards, held in memory as uint8; i.i.d. resumable batches.

    Each batch draws ``n`` indices uniformly with replacement from the source's
    own ``torch.Generator`` (no epochs: the stream position is the generator
    state, so a restored source continues exactly), flips each image
    horizontally with probability 1/2 when ``hflip`` (drawn from the same
    generator), and returns ``x = pixels / 127.5 - 1`` in [-1, 1], NCHW, on
    ``device``. The uint8 images are copied to each device once and indexed
    there, so a GPU step moves no pixels from the host.

    Usage::

        data = CIFAR10Shards(split="train", conditional=True)
        batch = data.next_batch(256, "cuda")      # batch.x [256, 3, 32, 32], batch.label [256]

    Args:
        root: shard folder; default ``$REALUID_CIFAR10``, else ``../shared/data/cifar10``
            (relative to the working directory), else ``/work/shared/data/cifar10``.
        split: "train" (50,000 images) or "test" (10,000).
        conditional: return class labels (and report ``num_classes = 10``).
        hflip: random horizontal flips.
        limit: keep only the first ``limit`` images (smoke tests).
        num_workers: decoding processes.
        cache_dir: keep the decoded uint8 arrays there as ``.npz`` and reuse them.
        seed: seed of the batch generator (the trainer re-seeds it with :meth:`seed`).
    """

    def __init__(self, root: str | None = None, split: str = "train", conditional: bool = False,
                 hflip: bool = True, limit: int | None = None, num_workers: int = 4,
                 cache_dir: str | None = None, seed: int = 0):
        self.shape = IMAGE_SHAPE
        self.conditional, self.hflip = conditional, hflip
        self.num_classes = NUM_CLASSES if conditional else 0
        self.root = str(find_shards(root, split)[0].parent)      # the resolved folder, read by image metrics
        self.images, self.labels = read_cifar10(root, split, limit, num_workers, cache_dir)
        self.generator = torch.Generator().manual_seed(seed)
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.images)

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def _arrays_on(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        return copies_on(self._on_device, device, self.images, self.labels)

    def next_batch(self, n: int, device: torch.device | str = "cpu", rows: slice = ALL_ROWS) -> Batch:
        index = torch.randint(len(self.images), (n,), generator=self.generator)
        flip = torch.rand(n, generator=self.generator) < 0.5
        index, flip = index[rows], flip[rows]
        images, labels = self._arrays_on(device)
        index = index.to(images.device, non_blocking=True)
        x = images[index]
        if self.hflip:
            x = torch.where(flip.to(images.device, non_blocking=True)[:, None, None, None], x.flip(-1), x)
        return Batch(to_unit_range(x), labels[index] if self.conditional else None)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "num_images": len(self.images)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_images", len(self.images)) != len(self.images):
            raise UserError(f"the checkpoint's data stream ran over {state['num_images']} images, "
                            f"this source holds {len(self.images)}", "CIFAR10Shards.limit",
                            "resume with the same split and limit as the run that wrote the checkpoint")
        self.generator.set_state(state["generator"])
