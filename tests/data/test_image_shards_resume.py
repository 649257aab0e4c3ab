"""Issue 14's must-hold: a real training run on ImageShards data, SIGKILLed after a checkpoint and resumed with
``--resume``, equals an uninterrupted run bit for bit, with the images held in memory and with them streamed.

64 random 16x16 PNGs in two class folders are packed once by ``realuid data pack`` into 4 shards of 16. Each run
is a ``python -m realuid run gin/fm_celeba64_teacher.gin --smoke`` subprocess (flow-matching teacher, tiny U-Net,
CPU, fp32, horizontal flips) shrunk to 16 steps of 6 images: 96 images, so the data stream crosses its first epoch
boundary inside a batch. The streamed mode binds ``ImageShards.max_memory_gb = 0`` (the memory rule:
``decoded_bytes > max_memory_gb * 1e9`` streams). Every process imports a probe (``--import``, recorded in run.json
and so imported again by the resumed process) that prints which mode its ImageShards served its first batch in:
the test asserts the mode of the reference, the killed and the resumed process.

Compared, per mode: every metrics.jsonl row (all keys but wall_time), every tensor of the final checkpoint
(network, EMA, Adam state, lr schedule, guard, running means, the training / torch RNG streams, the data stream's
epoch, position and generator) with ``torch.equal``, and the bytes of samples.png. Calibrations: a run with another
seed differs in rows and tensors, and a one-ulp change of one EMA weight or a data position off by one is caught.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import (assert_same_tensors, bind_args, cli, final_state, realuid_process, rows, start_realuid)
from realuid.checkpoints import checkpoint_step, checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

RECIPE = "gin/fm_celeba64_teacher.gin"
COUNT, SIDE, STEPS, BATCH = 64, 16, 16, 6
SEED = 3
MODES = {"in-memory": [], "streamed": ["ImageShards.max_memory_gb = 0.0"]}

PROBE = '''
"""Test probe: say (on stderr, once per process) in which mode ImageShards serves its first batch."""
import sys

from realuid.data.shards import ImageShards

_next_batch = ImageShards.next_batch


def next_batch(self, n, device="cpu", **rows):
    if not getattr(self, "_probe_said", False):
        self._probe_said = True
        print(f"probe: ImageShards streaming={self.streaming} images_in_memory={self.images is not None} "
              f"reader={type(self.reader).__name__}", file=sys.stderr, flush=True)
    return _next_batch(self, n, device, **rows)


ImageShards.next_batch = next_batch
'''
SAYS = {"in-memory": "probe: ImageShards streaming=False images_in_memory=True reader=NoneType",
        "streamed": "probe: ImageShards streaming=True images_in_memory=False reader=ShardReader"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """src/{cats,dogs}/*.png (32 each, random 16x16 RGB) packed by `realuid data pack` into 4 shards of 16."""
    from PIL import Image

    base = tmp_path_factory.mktemp("image_shards_resume")
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (base / "src" / name).mkdir(parents=True)
        for i in range(COUNT // 2):
            Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(base / "src" / name /
                                                                                         f"{i:03d}.png")
    code, stdout, stderr = cli("data", "pack", str(base / "src"), "--out", str(base / "shards"),
                               "--shard-size", "16", "--workers", "1")
    assert code == 0, stderr
    assert len(list((base / "shards").glob("train-*.tar"))) == 4
    (base / "probe.py").write_text(PROBE)
    return base / "shards"


def binds(shards: Path, mode: str) -> list[str]:
    return [f"ImageShards.root = '{shards}'", f"ImageShards.resolution = {SIDE}", f"UNet.img_resolution = {SIDE}",
            f"TrainingLoop.steps = {STEPS}", f"TrainingLoop.batch_size = {BATCH}",
            "TrainingLoop.checkpoint_every = 2", "TrainingLoop.keep_checkpoints = 2", "TrainingLoop.eval_every = 8",
            "TrainingLoop.eval_samples = 4", "TrainingLoop.tensorboard = False", "ImageShards.num_workers = 2",
            *MODES[mode]]


def args(shards: Path, out: Path, mode: str, seed: int = SEED) -> list[str]:
    return ["run", RECIPE, "--smoke", "--out", str(out), "--no-progress", "--seed", str(seed),
            "--import", str(shards.parent / "probe.py"), *bind_args(*binds(shards, mode))]


def kill_after_first_checkpoint(proc: subprocess.Popen, out: Path, timeout: float = 240.0) -> int:
    """SIGKILL ``proc`` as soon as a checkpoint file appears (polled every 2 ms); returns that checkpoint's step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = checkpoints(out / "checkpoints")
        if found:
            assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
            proc.send_signal(signal.SIGKILL)
            return checkpoint_step(found[-1])
        assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.communicate()}"
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("no checkpoint appeared in time")


_runs: dict[str, dict] = {}


@pytest.fixture(scope="module")
def runs(shards):
    """``runs(mode)``: the mode's uninterrupted reference and a run killed after its first checkpoint (side by side),
    then the killed one resumed; made once per mode."""
    def make(mode: str) -> dict:
        if mode in _runs:
            return _runs[mode]
        base = shards.parent / mode
        reference, killed = base / "reference", base / "killed"
        procs = {"reference": start_realuid(*args(shards, reference, mode)),
                 "killed": start_realuid(*args(shards, killed, mode))}
        seen: dict = {}

        def stop():
            try:
                seen["step"] = kill_after_first_checkpoint(procs["killed"], killed)
            except BaseException as err:  # noqa: BLE001 (re-raised below)
                seen["error"] = err

        thread = threading.Thread(target=stop)
        thread.start()
        thread.join()
        outputs = {name: proc.communicate(timeout=300) for name, proc in procs.items()}
        if "error" in seen:
            raise seen["error"]
        assert procs["reference"].returncode == 0, outputs["reference"][1]
        stopped = max(checkpoint_step(p) for p in checkpoints(killed / "checkpoints"))
        partial = rows(killed) if (killed / "metrics.jsonl").is_file() else []
        resumed = realuid_process("run", "--resume", str(killed), "--no-progress", timeout=300)
        _runs[mode] = {"reference": reference, "killed": killed, "codes": {n: p.returncode for n, p in procs.items()},
                       "outputs": outputs, "seen": seen["step"], "stopped": stopped, "partial": partial,
                       "resumed": resumed}
        return _runs[mode]

    yield make
    _runs.clear()


@pytest.mark.parametrize("mode", list(MODES))
def test_resume_after_sigkill_is_bit_identical(runs, mode):
    r = runs(mode)
    # the mode is the one asked for, in all three processes
    for name in ("reference", "killed"):
        assert r["outputs"][name][1].count(SAYS[mode]) == 1, (name, r["outputs"][name][1])
    assert r["resumed"].stderr.count(SAYS[mode]) == 1, r["resumed"].stderr
    # killed after a checkpoint, mid-run, before the rows it would have written
    assert r["codes"]["killed"] == -signal.SIGKILL
    assert r["seen"] <= r["stopped"] < STEPS, (r["seen"], r["stopped"])
    assert len(r["partial"]) < len(rows(r["reference"])) == STEPS // 8
    assert r["resumed"].returncode == 0, r["resumed"].stderr
    assert "Traceback" not in r["resumed"].stderr
    # bit-identical: every row, every tensor of the final checkpoint, the sample grid
    assert rows(r["killed"]) == rows(r["reference"])
    resumed, reference = final_state(r["killed"], STEPS), final_state(r["reference"], STEPS)
    assert_same_tensors(resumed, reference)
    assert (r["killed"] / "samples.png").read_bytes() == (r["reference"] / "samples.png").read_bytes()
    # what was compared: the pieces of state named in the issue, and a data stream past its first epoch
    assert {"network", "ema", "optimizer", "lr", "rng", "torch_rng", "data"} <= set(reference), sorted(reference)
    assert (reference["data"]["epoch"], reference["data"]["position"]) == divmod(STEPS * BATCH, COUNT)


def test_both_modes_train_alike(runs):
    """The two modes serve the same batches, so their runs agree too (all but the config text, which names the
    max_memory_gb binding)."""
    memory, streamed = runs("in-memory"), runs("streamed")
    assert rows(memory["reference"]) == rows(streamed["reference"])
    a, b = final_state(memory["reference"], STEPS), final_state(streamed["reference"], STEPS)
    assert "max_memory_gb = 0.0" in b["meta"]["config"] and "max_memory_gb = 0.0" not in a["meta"]["config"]
    a["meta"].pop("config")
    b["meta"].pop("config")
    assert_same_tensors(a, b)


def test_the_comparison_can_fail(runs, shards):
    """Calibration: another seed gives other rows and tensors; a one-ulp change and an off-by-one data position
    are caught by the tensor comparison."""
    reference = runs("in-memory")["reference"]
    other = shards.parent / "other_seed"
    proc = realuid_process(*args(shards, other, "in-memory", seed=SEED + 1), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert rows(other) != rows(reference)
    with pytest.raises(AssertionError):
        assert_same_tensors(final_state(other, STEPS), final_state(reference, STEPS))

    state = final_state(reference, STEPS)
    name = next(k for k, v in state["ema"].items() if v.is_floating_point() and v.numel())
    changed = final_state(reference, STEPS)
    flat = changed["ema"][name].view(-1)
    flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf"), dtype=flat.dtype))
    with pytest.raises(AssertionError, match=re.escape(f"ema.{name}")):
        assert_same_tensors(changed, state)
    moved = final_state(reference, STEPS)
    moved["data"]["position"] += 1
    with pytest.raises(AssertionError, match="data.position"):
        assert_same_tensors(moved, state)
