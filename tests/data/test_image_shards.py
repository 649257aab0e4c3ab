"""ImageShards: epoch order, in memory == streamed, exact resume in both modes, disjoint ranks, checked bindings."""

from __future__ import annotations

import pytest
import torch

from realuid.data.shards import EpochOrder, ImageShards
from realuid.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")
STREAM = dict(max_memory_gb=0.0)              # decoded size 200 x 3 x 64 x 64 > 0: always streams


def source(packed, **kwargs) -> ImageShards:
    return ImageShards(str(packed), conditional=True, hflip=True, num_workers=2, **kwargs)


def batches(data: ImageShards, sizes) -> list:
    return [data.next_batch(n) for n in sizes]


def same(a, b) -> bool:
    return torch.equal(a.x, b.x) and (a.label is None and b.label is None or torch.equal(a.label, b.label))


SIZES = [48, 64, 100, 7, 200, 33]             # 452 images: past two epoch boundaries of 200


def test_modes_are_chosen_by_the_memory_rule(packed):
    memory, streamed = source(packed), source(packed, **STREAM)
    assert memory.decoded_bytes == 200 * 3 * 64 * 64
    assert not memory.streaming and memory.images.shape == (200, 3, 64, 64)
    assert streamed.streaming and streamed.images is None
    assert source(packed, max_memory_gb=200 * 3 * 64 * 64 / 1e9).streaming is False     # equal: fits
    streamed.close()


def test_streaming_gives_the_in_memory_batches(packed):
    memory, streamed = source(packed), source(packed, **STREAM)
    memory.seed(11)
    streamed.seed(11)
    for a, b in zip(batches(memory, SIZES), batches(streamed, SIZES)):
        assert same(a, b)
    assert a.x.shape == (33, 3, 64, 64) and a.x.dtype == torch.float32 and -1 <= a.x.min() and a.x.max() <= 1
    other = source(packed)
    other.seed(12)                                # calibration: another seed, other batches
    memory.seed(11)
    assert not same(other.next_batch(48), memory.next_batch(48))
    streamed.close()


def test_each_epoch_serves_every_image_once_and_flips_half(packed):
    data = ImageShards(str(packed), hflip=True, num_workers=1)
    data.seed(3)
    plain = {image.numpy().tobytes(): i for i, image in enumerate(data.images)}
    mirror = {image.flip(-1).numpy().tobytes(): i for i, image in enumerate(data.images)}
    assert len(plain) == 200 and not set(plain) & set(mirror)
    for epoch in range(2):
        served = torch.cat([b.x for b in batches(data, [64, 64, 50, 22])])     # 200: one epoch
        keys = [((x + 1) * 127.5).round().to(torch.uint8).numpy().tobytes() for x in served]
        assert all((k in plain) != (k in mirror) for k in keys), "a served image is no dataset image or mirror"
        assert sorted(plain.get(k, mirror.get(k)) for k in keys) == list(range(200)), f"epoch {epoch} repeats"
        assert 70 < sum(k in mirror for k in keys) < 130
    assert (data.order.epoch, data.order.position) == (1, 200)     # the next batch starts epoch 2


@pytest.mark.parametrize("memory", [16.0, 0.0], ids=["in-memory", "streamed"])
def test_resume_mid_epoch_is_bit_identical(packed, memory, tmp_path):
    first = source(packed, max_memory_gb=memory)
    first.seed(5)
    batches(first, [48, 64, 100])                 # 212: into the second epoch
    torch.save(first.state_dict(), tmp_path / "state.pt")
    second = source(packed, max_memory_gb=memory)
    second.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for a, b in zip(batches(first, SIZES), batches(second, SIZES)):
        assert same(a, b)
    stale = source(packed, max_memory_gb=memory)  # calibration: without the state the stream differs
    stale.seed(5)
    assert not same(stale.next_batch(48), first.next_batch(48))
    for data in (first, second, stale):
        data.close()


def test_a_state_moves_between_modes(packed):
    memory, streamed = source(packed), source(packed, **STREAM)
    memory.seed(9)
    batches(memory, [150])
    streamed.load_state_dict(memory.state_dict())
    for a, b in zip(batches(memory, SIZES), batches(streamed, SIZES)):
        assert same(a, b)
    with pytest.raises(UserError, match="same shard folder, split and limit"):
        source(packed, limit=100).load_state_dict(memory.state_dict())
    streamed.close()


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_of_the_training_loop_keep_disjoint_slices_that_cover_each_epoch(packed, monkeypatch, world_size):
    """TrainingLoop: every rank seeds alike and reads its contiguous rows of the global batch (Distributed.batch_rows)."""
    from realuid.engine.distributed import Distributed

    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    kept = {rank: [] for rank in range(world_size)}
    for rank in range(world_size):
        monkeypatch.setenv("RANK", str(rank))
        data, dist = ImageShards(str(packed), num_workers=1), Distributed()
        assert (data.rank, data.world_size) == (0, 1)                   # the environment does not split it
        data.seed(7 + 1)                                                # TrainingLoop: data.seed(seed + 1)
        for _ in range(2 * 200 // 40):                                  # two epochs of global batches of 40
            index, _ = data.order.peek(40), data.next_batch(40, rows=dist.batch_rows(40))
            kept[rank].append(dist.shard(index))
    for epoch in range(2):
        per_rank = [torch.cat(kept[r][5 * epoch:5 * (epoch + 1)]).tolist() for r in range(world_size)]
        served = [i for indices in per_rank for i in indices]
        assert sorted(served) == list(range(200)), f"epoch {epoch}: the ranks' slices overlap or miss images"


@pytest.mark.parametrize("limit", [200, 199])
def test_per_process_ranks_are_disjoint_and_cover_each_epoch(packed, limit):
    """rank / world_size bound: rank r serves positions r, r + W, ... of the shared epoch permutation."""
    ranks = []
    for rank in (0, 1):
        data = ImageShards(str(packed), limit=limit, rank=rank, world_size=2, num_workers=1)
        data.seed(21)                                                   # the same seed on every rank
        ranks.append(data)
    lengths = [len(range(r, limit, 2)) for r in (0, 1)]
    for epoch in range(2):
        served = [data.order.take(length)[0] for data, length in zip(ranks, lengths)]
        assert set(served[0].tolist()).isdisjoint(served[1].tolist())
        assert sorted(torch.cat(served).tolist()) == list(range(limit)), epoch
    perm, _ = EpochOrder(limit, seed=21).take(limit)                    # the one-process order, split
    again = ImageShards(str(packed), limit=limit, rank=1, world_size=2, num_workers=1)
    again.seed(21)
    assert torch.equal(again.order.take(lengths[1])[0], perm[1::2])
    with pytest.raises(UserError, match="outside 0..1"):
        ImageShards(str(packed), rank=2, world_size=2)


def test_bindings_are_checked(packed, tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"resolution = 32, but .* holds 64x64 images") as err:
        ImageShards(str(packed), resolution=32)
    assert "ImageShards.resolution = 64" in err.value.fix
    assert ImageShards(str(packed), resolution=64, limit=10).shape == (3, 64, 64)
    with pytest.raises(UserError, match="holds the 'train' split, not 'test'"):
        ImageShards(str(packed), split="test")
    with pytest.raises(UserError, match="limit must be a positive integer"):
        ImageShards(str(packed), limit=0)
    assert len(ImageShards(str(packed), limit=10_000)) == 200                    # more than there is: all
    monkeypatch.delenv("REALUID_DATA", raising=False)
    with pytest.raises(UserError, match=r"REALUID_DATA is not set") as err:
        ImageShards()
    assert "ImageShards.root" in err.value.fix
    monkeypatch.setenv("REALUID_DATA", str(packed.parent))                       # a folder of split folders
    (packed.parent / "train").symlink_to(packed)
    assert len(ImageShards(limit=5)) == 5
    with pytest.raises(UserError, match="does not exist"):
        ImageShards(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="no manifest.json"):
        ImageShards(str(tmp_path))
