"""``realuid data pack`` and ``realuid data info`` on real files: exact read-back, manifest, checksums, bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from realuid.cli.app import app
from realuid.data.pack import Transform, pack_images
from realuid.data.shards import ImageShards, read_images, read_manifest
from realuid.errors import UserError
from realuid.io import sha256_file

CLASSES = ("cats", "dogs")                 # the class folders of the class_folder fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_paragraph_error(result) -> str:
    """The CLI's error paragraph (exit 2, what / where / fix, no traceback), whitespace-normalised."""
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "error:" in text and "Where:" in text and "Fix:" in text and "Traceback" not in text, text
    return text


def source_pixels(folder: Path) -> dict[bytes, str]:
    """Pixels of every source PNG -> its class folder name ('' at the top level)."""
    found = {}
    for path in sorted(folder.rglob("*.png")):
        rel = path.relative_to(folder).parts
        found[np.asarray(Image.open(path).convert("RGB")).tobytes()] = rel[0] if len(rel) > 1 else ""
    return found


def leftovers(out: Path) -> list[str]:
    """Anything a pack to ``out`` left behind: the folder itself or a partial sibling."""
    return sorted(p.name for p in out.parent.iterdir() if p.name == out.name or p.name.startswith(f".{out.name}."))


# -- packing and reading back ----------------------------------------------------------------------------------------
def test_pack_reads_back_pixel_exact_with_labels_counts_and_checksums(class_folder, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    monkeypatch.setattr(sys, "argv", ["realuid", "data", "pack", str(class_folder), "--out", str(out)])
    result = cli("data", "pack", class_folder, "--out", out, "--shard-size", "64", "--workers", "2")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 200 and manifest["resolution"] == 64 and manifest["channels"] == 3
    assert manifest["classes"] == list(CLASSES) and manifest["format"] == "png"
    assert [s["count"] for s in manifest["shards"]] == [64, 64, 64, 8]
    assert [s["name"] for s in manifest["shards"]] == [f"train-00000{i}.tar" for i in range(4)]
    assert manifest["command"] == f"realuid data pack {class_folder} --out {out}" and manifest["realuid_version"]
    for shard in manifest["shards"]:
        assert sha256_file(out / shard["name"]) == shard["sha256"]
        assert (out / shard["name"]).stat().st_size == shard["bytes"]

    images, labels = read_images(read_manifest(out))
    expected = source_pixels(class_folder)
    seen = set()
    for image, label in zip(images, labels):
        key = image.permute(1, 2, 0).numpy().tobytes()
        assert key in expected, "a stored image is not pixel-identical to any source image"
        assert CLASSES[label] == expected[key]
        seen.add(key)
    assert len(seen) == 200 == len(expected)                               # every source image exactly once
    assert torch.bincount(labels).tolist() == [120, 80]
    assert labels[:64].unique().numel() == 2                              # shuffled: each shard holds both classes

    info = cli("data", "info", out)
    assert info.exit_code == 0, info.output
    assert "every sha256 matches" in info.output and "0=cats, 1=dogs" in info.output


def test_flat_folder_has_no_classes(flat_folder, tmp_path):
    out = tmp_path / "flat"
    manifest = pack_images(flat_folder, out, shard_size=1000)
    assert manifest["classes"] == [] and manifest["count"] == 60 and len(manifest["shards"]) == 1
    data = ImageShards(str(out))
    assert data.num_classes == 0 and data.next_batch(4).label is None
    assert set(source_pixels(flat_folder)) == {im.permute(1, 2, 0).numpy().tobytes() for im in data.images}
    with pytest.raises(UserError, match="has no classes"):
        ImageShards(str(out), conditional=True)


def test_a_zip_packs_to_the_same_shards_as_its_folder(class_folder, tmp_path, packed):
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:      # one top folder, unwrapped by pack
        for path in sorted(class_folder.rglob("*.png")):
            zf.write(path, f"celeb/{path.relative_to(class_folder).as_posix()}")
        zf.writestr("celeb/notes.txt", "not an image")
        zf.writestr("__MACOSX/celeb/._img_0000.png", "resource fork")
    manifest = pack_images(archive, tmp_path / "from_zip", shard_size=64)
    assert manifest["classes"] == list(CLASSES) and manifest["skipped_files"] == 1
    reference = read_manifest(packed).raw
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in reference["shards"]]


def test_center_crop_and_resize(tmp_path, images_writer):
    src = tmp_path / "wide"
    paths = images_writer(src, 6, size=(80, 64))
    result = cli("data", "pack", src, "--out", tmp_path / "bad", "--resolution", "32")
    assert "not square" in one_paragraph_error(result) and leftovers(tmp_path / "bad") == []
    out = tmp_path / "crop"
    assert cli("data", "pack", src, "--out", out, "--resolution", "32", "--center-crop").exit_code == 0
    expected = set()
    for path in paths:
        image = Image.open(path).crop((8, 0, 72, 64)).resize((32, 32), Image.LANCZOS)
        expected.add(np.asarray(image).tobytes())
    images, _ = read_images(read_manifest(out))
    assert images.shape == (6, 3, 32, 32)
    assert {im.permute(1, 2, 0).numpy().tobytes() for im in images} == expected


def test_jpeg_format_is_close_not_exact(flat_folder, tmp_path):
    out = tmp_path / "jpg"
    manifest = pack_images(flat_folder, out, image_format="jpg", quality=95)
    assert manifest["format"] == "jpg" and manifest["quality"] == 95
    data = ImageShards(str(out))
    original = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)
                            for p in sorted(flat_folder.glob("*.png"))]).float()
    stored = data.images.float()
    best = torch.cdist(stored.flatten(1), original.flatten(1)).argmin(1)
    error = (stored - original[best]).abs().mean()
    assert 0 < error < 4


# -- bad inputs: exit 2, what / where / fix, nothing misleading left --------------------------------------------------
def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    text = one_paragraph_error(cli("data", "pack", tmp_path / "empty", "--out", tmp_path / "out"))
    assert "no images in" in text and "readme.txt" in text and leftovers(tmp_path / "out") == []


def test_mixed_resolutions_without_resolution(tmp_path, images_writer):
    src = tmp_path / "mixed"
    images_writer(src, 5, size=(64, 64))
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(src / "zz_small.png")
    text = one_paragraph_error(cli("data", "pack", src, "--out", tmp_path / "out", "--shard-size", "2"))
    assert "different sizes" in text and "is 48x48" in text and "--resolution" in text
    assert leftovers(tmp_path / "out") == []
    assert cli("data", "pack", src, "--out", tmp_path / "out", "--resolution", "32").exit_code == 0


def test_unreadable_image(tmp_path, images_writer):
    src = tmp_path / "broken"
    images_writer(src / "a", 4)
    (src / "a" / "img_0002.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a png")
    text = one_paragraph_error(cli("data", "pack", src, "--out", tmp_path / "out"))
    assert "a/img_0002.png cannot be read as an image" in text and str(src / "a" / "img_0002.png") in text
    assert leftovers(tmp_path / "out") == []


def test_images_beside_class_folders_are_ambiguous(tmp_path, images_writer):
    src = tmp_path / "both"
    images_writer(src, 2)
    images_writer(src / "cls", 2)
    assert "ambiguous" in one_paragraph_error(cli("data", "pack", src, "--out", tmp_path / "out"))


def test_missing_source_and_existing_out(flat_folder, tmp_path):
    assert "does not exist" in one_paragraph_error(cli("data", "pack", tmp_path / "nowhere", "--out", tmp_path / "o"))
    assert "lies inside SRC" in one_paragraph_error(cli("data", "pack", flat_folder, "--out", flat_folder / "shards"))
    out = tmp_path / "out"
    pack_images(flat_folder, out)
    before = sha256_file(out / "manifest.json")
    assert "--overwrite" in one_paragraph_error(cli("data", "pack", flat_folder, "--out", out))
    assert sha256_file(out / "manifest.json") == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("keep me")
    assert "not a shard folder" in one_paragraph_error(cli("data", "pack", flat_folder, "--out", notes,
                                                           "--overwrite"))
    assert (notes / "thesis.tex").read_text() == "keep me"
    assert cli("data", "pack", flat_folder, "--out", out, "--overwrite", "--shard-size", "7").exit_code == 0
    assert len(read_manifest(out).shards) == 9 and leftovers(out) == ["out"]


def test_a_failure_mid_pack_leaves_nothing_and_a_killed_packs_folder_is_cleaned(flat_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = []
    real = Transform.apply

    def fail_late(self, data, rel, where):
        calls.append(rel)
        if len(calls) == 40:
            raise KeyboardInterrupt
        return real(self, data, rel, where)

    monkeypatch.setattr(Transform, "apply", fail_late)
    with pytest.raises(KeyboardInterrupt):
        pack_images(flat_folder, out, shard_size=8, num_workers=1)
    assert leftovers(out) == []                                       # shards had been written: all removed
    monkeypatch.setattr(Transform, "apply", real)
    stale = tmp_path / ".out.partial-99999999"                          # what a SIGKILLed pack leaves
    stale.mkdir()
    (stale / "train-000000.tar").write_bytes(b"half")
    assert "no manifest.json" in one_paragraph_error(cli("data", "info", stale))
    pack_images(flat_folder, out)
    assert leftovers(out) == ["out"]


@pytest.fixture
def damaged(packed, tmp_path) -> Path:
    folder = tmp_path / "damaged"
    shutil.copytree(packed, folder)
    return folder


def test_corrupted_shard(damaged):
    shard = damaged / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    text = one_paragraph_error(cli("data", "info", damaged))
    assert "shard train-000001.tar is corrupted: its sha256" in text and "differs from the manifest" in text
    assert str(shard) in text
    for memory in (16.0, 0.0):
        with pytest.raises(UserError, match="train-000001.tar is corrupted"):
            ImageShards(str(damaged), max_memory_gb=memory)
    assert cli("data", "info", damaged, "--no-verify").exit_code == 0        # sizes alone do not see it


def test_truncated_shard(damaged):
    shard = damaged / "train-000002.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    text = one_paragraph_error(cli("data", "info", damaged, "--no-verify"))
    assert f"train-000002.tar has {len(data) // 2:,} bytes" in text and "truncated" in text
    for memory in (16.0, 0.0):
        with pytest.raises(UserError, match=r"train-000002.tar has .* bytes, the manifest says .* \(truncated\)"):
            ImageShards(str(damaged), max_memory_gb=memory, verify=False)


def test_missing_shard_and_bad_manifest(damaged):
    (damaged / "train-000003.tar").unlink()
    assert "shard train-000003.tar is missing" in one_paragraph_error(cli("data", "info", damaged))
    (damaged / "manifest.json").write_text("{not json")
    assert "cannot be read as JSON" in one_paragraph_error(cli("data", "info", damaged))
    (damaged / "manifest.json").write_text(json.dumps({"train-000000.tar.gz": {"samples": 5, "sha256": "ab"}}))
    assert "CIFAR10Shards" in one_paragraph_error(cli("data", "info", damaged))


def test_stale_partials_of_live_processes_are_kept(flat_folder, tmp_path):
    live = tmp_path / f".out.partial-{os.getppid()}"
    live.mkdir()
    pack_images(flat_folder, tmp_path / "out")
    assert live.is_dir()
