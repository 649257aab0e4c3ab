"""Folders of small real images (PNG files on disk) and their packed shards, made once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CLASSES = ("cats", "dogs")


def write_images(folder: Path, count: int, size=(64, 64), seed: int = 0, ext: str = "png") -> list[Path]:
    """``count`` RGB images (smooth gradients plus noise, so they compress like photos) as files in ``folder``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    paths = []
    for i in range(count):
        base = rng.uniform(0, 255, 3)[None, None] * (x[..., None] / width) + rng.uniform(0, 128, 3)[None, None]
        pixels = np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img_{i:04d}.{ext}"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def images_writer():
    """:func:`write_images`, for tests that make their own folders."""
    return write_images


@pytest.fixture(scope="session")
def class_folder(tmp_path_factory) -> Path:
    """src/cats/*.png (120) and src/dogs/*.png (80): 200 64x64 PNGs in two classes."""
    root = tmp_path_factory.mktemp("labelled") / "src"
    write_images(root / "cats", 120, seed=1)
    write_images(root / "dogs", 80, seed=2)
    return root


@pytest.fixture(scope="session")
def flat_folder(tmp_path_factory) -> Path:
    """60 64x64 PNGs directly in the folder (no classes)."""
    root = tmp_path_factory.mktemp("flat") / "src"
    write_images(root, 60, seed=3)
    return root


@pytest.fixture(scope="session")
def packed(class_folder, tmp_path_factory) -> Path:
    """class_folder packed into shards of 64 images (4 shards: 64, 64, 64, 8)."""
    from realuid.data.pack import pack_images

    out = tmp_path_factory.mktemp("packed") / "shards"
    pack_images(class_folder, out, shard_size=64, num_workers=2, command="test")
    return out
