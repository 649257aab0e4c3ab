"""Rows of a global batch: ``next_batch(n, rows=r)`` is ``next_batch(n)[r]`` and advances the stream by n.

Under data parallelism each rank reads only its rows of the global batch
(``Distributed.coupled_rows``); the ranks' parts, put together, must be the
batch one process reads, and a streaming source must read from disk only the
rows asked for.
"""

from __future__ import annotations

import pytest
import torch

from helpers import SHARDS
from realuid.couplings import IndependentGaussian, MinibatchOT, PairedDegradation
from realuid.data.gmm import GaussianMixture
from realuid.data.shards import ImageShards
from realuid.data.toys import TwoMoons
from realuid.engine.distributed import Distributed

pytestmark = pytest.mark.usefixtures("one_thread")
SIZES = [48, 64, 100, 7, 200, 36]          # ImageShards: 455 samples, over two epoch boundaries of 200


def sources(packed):
    yield "gmm", lambda: GaussianMixture(labelled=True)
    yield "moons", lambda: TwoMoons()
    yield "shards-in-memory", lambda: ImageShards(str(packed), conditional=True, hflip=True, num_workers=1)
    yield "shards-streamed", lambda: ImageShards(str(packed), conditional=True, hflip=True, num_workers=2,
                                                 max_memory_gb=0.0)
    if (SHARDS / "train-000000.tar.gz").is_file():
        from realuid.data.cifar import CIFAR10Shards

        yield "cifar", lambda: CIFAR10Shards(root=str(SHARDS), limit=200, num_workers=0, conditional=True)


def same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is None and b is None or torch.equal(a, b)


@pytest.mark.parametrize("world_size", [2, 4])
def test_each_ranks_rows_put_together_are_the_one_process_batch(packed, world_size):
    for name, make in sources(packed):
        whole = make()
        whole.seed(5)
        ranks = [make() for _ in range(world_size)]
        for data in ranks:
            data.seed(5)
        for n in SIZES:
            n -= n % world_size
            full = whole.next_batch(n)
            b = n // world_size
            parts = [data.next_batch(n, rows=slice(r * b, (r + 1) * b)) for r, data in enumerate(ranks)]
            assert all(p.x.shape[0] == b for p in parts), name
            assert torch.equal(torch.cat([p.x for p in parts]), full.x), (name, n)
            labels = [p.label for p in parts]
            assert same(None if labels[0] is None else torch.cat(labels), full.label), (name, n)
        assert full.label is not None or name == "moons"
        other = make()                             # calibration: another seed gives another batch
        other.seed(6)
        assert not torch.equal(other.next_batch(SIZES[0]).x, make().next_batch(SIZES[0]).x), name


def test_a_streamed_rank_reads_and_decodes_only_its_rows(packed, monkeypatch):
    data = ImageShards(str(packed), num_workers=1, max_memory_gb=0.0)
    data.seed(1)
    fetched = []
    fetch = data.reader.fetch
    monkeypatch.setattr(data.reader, "fetch", lambda index: fetched.append(len(index)) or fetch(index))
    for _ in range(3):
        data.next_batch(40, rows=slice(10, 20))
    assert fetched and set(fetched) == {10}, fetched   # the prefetched next batch too: only the same rows
    data.close()


@pytest.mark.parametrize("coupling", [IndependentGaussian(), PairedDegradation(noise_std=0.3), MinibatchOT()],
                         ids=["independent", "paired", "minibatch-ot"])
def test_coupled_rows_of_two_ranks_make_the_one_process_draw(coupling, monkeypatch):
    """Ranks read only their rows unless the coupling reads the data (then the whole batch, sliced after)."""
    n, shape = 64, (2,)

    def draw(world_size: int, rank: int):
        monkeypatch.setenv("WORLD_SIZE", str(world_size))
        monkeypatch.setenv("RANK", str(rank))
        data = GaussianMixture(labelled=True)
        data.seed(3)
        read = []
        next_batch = data.next_batch
        data.next_batch = lambda m, device="cpu", rows=slice(None): read.append(rows) or next_batch(m, device, rows)
        rng = torch.Generator().manual_seed(9)
        real, coupled = Distributed().coupled_rows(data, coupling, n, shape, rng, torch.device("cpu"),
                                                   torch.float64)
        after = torch.randn(3, generator=rng)      # the stream after the draw: the same on every rank
        return real, coupled, after, read

    real, coupled, after, _ = draw(1, 0)
    parts = [draw(2, r) for r in (0, 1)]
    assert torch.equal(torch.cat([p[0].x for p in parts]), real.x)
    assert torch.equal(torch.cat([p[1].x1 for p in parts]), coupled.x1)
    if coupled.cond is not None:
        assert torch.equal(torch.cat([p[1].cond for p in parts]), coupled.cond)
    assert all(torch.equal(p[2], after) for p in parts)
    rows = [p[3][0] for p in parts]
    if coupling.needs_data:
        assert rows == [slice(None)] * 2
    else:
        assert rows == [slice(0, 32), slice(32, 64)] and real.x.dtype == torch.float64
