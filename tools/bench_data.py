"""Benchmark: ImageShards throughput, images/s of batches of 256 at 32x32 and 64x64, in memory and streamed.

Writes ``--images`` photo-like RGB PNGs (smooth gradients plus noise) per
resolution into a temporary folder, packs them with ``realuid data pack``
(timed too), then times ``next_batch(256)`` on the CPU: in memory (one decode
at construction, batches index a uint8 array) and streamed
(``max_memory_gb = 0``: each batch reads and decodes its 256 PNGs from the
shards, the next one prefetched). The first batches are a warm-up; the figure
is the median over ``--repeats`` timed runs of ``--batches`` batches. Prints a
table and writes JSON.

    python tools/bench_data.py --images 2048 --workers 2 --out docs/results/bench_data.json
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table

from realuid.data.pack import pack_images
from realuid.data.shards import ImageShards


def write_images(folder: Path, count: int, side: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    y, x = np.mgrid[0:side, 0:side]
    for i in range(count):
        base = rng.uniform(0, 255, 3)[None, None] * (x[..., None] / side) + rng.uniform(0, 128, 3)[None, None]
        pixels = np.clip(base + rng.normal(0, 12, (side, side, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")


def time_batches(data: ImageShards, batch: int, batches: int, repeats: int, warmup: int) -> float:
    """Median images/s of ``batches`` calls of ``next_batch(batch)`` after ``warmup`` calls."""
    data.seed(0)
    for _ in range(warmup):
        data.next_batch(batch)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            data.next_batch(batch)
        rates.append(batch * batches / (time.perf_counter() - start))
    return statistics.median(rates)


def main(images: int = typer.Option(2048, help="Images per resolution."),
         resolutions: str = typer.Option("32,64", help="Comma-separated image sides."),
         batch: int = typer.Option(256, help="Batch size."),
         batches: int = typer.Option(8, help="Timed batches per repeat."),
         repeats: int = typer.Option(3, help="Timed repeats (median)."),
         warmup: int = typer.Option(2, help="Untimed batches first."),
         workers: int = typer.Option(2, help="Decoding threads (pack and ImageShards.num_workers)."),
         shard_size: int = typer.Option(512, help="Images per shard."),
         threads: int = typer.Option(1, help="torch intra-op threads."),
         out: Path = typer.Option(Path("docs/results/bench_data.json"), help="JSON output.")):
    """Time packing and ImageShards batches in memory and streamed; print a table and write JSON."""
    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in (int(s) for s in resolutions.split(",")):
            src, shards = Path(tmp) / f"src{side}", Path(tmp) / f"shards{side}"
            write_images(src, images, side)
            start = time.perf_counter()
            manifest = pack_images(src, shards, shard_size=shard_size, num_workers=workers)
            pack_rate = images / (time.perf_counter() - start)
            row = {"resolution": side, "images": images, "batch": batch, "shards": len(manifest["shards"]),
                   "shard_bytes": sum(s["bytes"] for s in manifest["shards"]), "pack_images_per_s": round(pack_rate)}
            start = time.perf_counter()
            memory = ImageShards(str(shards), hflip=True, num_workers=workers)
            row["decode_all_s"] = round(time.perf_counter() - start, 3)
            row["in_memory_images_per_s"] = round(time_batches(memory, batch, batches, repeats, warmup))
            streamed = ImageShards(str(shards), hflip=True, num_workers=workers, max_memory_gb=0.0)
            row["streamed_images_per_s"] = round(time_batches(streamed, batch, batches, repeats, warmup))
            streamed.close()
            rows.append(row)
    table = Table(title=f"ImageShards on CPU: batches of {batch}, {workers} decoding thread(s)")
    for column in ("resolution", "images", "shards", "MB", "pack img/s", "decode all (s)", "in memory img/s",
                   "streamed img/s"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r['resolution']}x{r['resolution']}", str(r["images"]), str(r["shards"]),
                      f"{r['shard_bytes'] / 1e6:.1f}", f"{r['pack_images_per_s']:,}", f"{r['decode_all_s']:.2f}",
                      f"{r['in_memory_images_per_s']:,}", f"{r['streamed_images_per_s']:,}")
    Console().print(table)
    result = {"rows": rows, "settings": {"workers": workers, "threads": threads, "batches": batches,
                                         "repeats": repeats, "warmup": warmup, "shard_size": shard_size},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
              "command": "python tools/bench_data.py " + " ".join(sys.argv[1:])}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
