"""The checkpoint file format: checksums that catch damage, fallback to the newest good checkpoint, pruning, and
weights_only loading that refuses a pickle which runs code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from realuid.checkpoints import checkpoint_step, checkpoints, latest_good, load_checkpoint, save_checkpoint
from realuid.errors import UserError
from realuid.io import sha256_file


def test_checkpoint_into_an_unwritable_place_is_a_clear_error(tmp_path):
    blocker = tmp_path / "checkpoints"
    blocker.write_text("a file where the checkpoint folder should be")
    with pytest.raises(UserError, match="cannot create the checkpoint folder .*checkpoints"):
        save_checkpoint(blocker, 10, {"w": torch.ones(2)})


def _three_checkpoints(folder: Path) -> list[Path]:
    return [save_checkpoint(folder, step, {"step": step, "w": torch.full((4,), float(step))}, keep=3)
            for step in (10, 20, 30)]


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "drop the checksum"])
def test_damaged_checkpoint_is_detected_and_named(tmp_path, damage):
    path = _three_checkpoints(tmp_path)[-1]
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip a byte":
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:
        path.with_name(path.name + ".sha256").unlink()
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    message = err.value.message
    assert str(path) in message and "Fix:" in message
    assert ("corrupted or truncated" in message) if damage != "drop the checksum" else ("no checksum" in message)


def test_intact_checkpoint_loads(tmp_path):
    """Calibration of the test above: the same file undamaged loads."""
    path = _three_checkpoints(tmp_path)[-1]
    assert torch.equal(load_checkpoint(path)["w"], torch.full((4,), 30.0))


def test_latest_good_falls_back_with_a_warning(tmp_path, capsys):
    paths = _three_checkpoints(tmp_path)
    assert latest_good(tmp_path)[0] == paths[-1]
    paths[-1].write_bytes(paths[-1].read_bytes()[:50])
    found, state = latest_good(tmp_path)
    assert found == paths[1] and state["step"] == 20
    err = capsys.readouterr().err
    assert f"skipping bad checkpoint: checkpoint {paths[-1]} is corrupted or truncated" in err
    assert f"falling back to the previous good checkpoint {paths[1]}" in err
    for p in paths[:2]:
        p.write_bytes(b"garbage")
    assert latest_good(tmp_path) is None


def test_keep_prunes_old_checkpoints_and_their_checksums(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [checkpoint_step(p) for p in checkpoints(tmp_path)] == [30, 40]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000030.pt", "step_00000030.pt.sha256",
                                                          "step_00000040.pt", "step_00000040.pt.sha256"]


# -- weights_only ----------------------------------------------------------------------------------
class _Payload:
    """Unpickling this calls open(path, 'w'): a file appears if the pickle runs code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    evidence = tmp_path / "pwned.txt"
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    path = folder / "step_00000010.pt"
    torch.save({"step": 10, "payload": _Payload(evidence)}, path, pickle_protocol=2)
    (folder / "step_00000010.pt.sha256").write_text(sha256_file(path) + "\n")  # the attacker's checksum
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    assert "cannot be loaded safely (it asks to run builtins.open" in err.value.message or \
        "cannot be loaded safely (it asks to run io.open" in err.value.message, err.value.message
    assert str(path) in err.value.message
    assert not evidence.exists()
    # calibration: the same file, unpickled without weights_only, does run the payload
    torch.load(path, weights_only=False)
    assert evidence.exists()


def test_a_raw_pickle_is_refused_too(tmp_path):
    evidence = tmp_path / "pwned.txt"
    path = tmp_path / "step_00000010.pt"
    path.write_bytes(pickle.dumps({"payload": _Payload(evidence)}, protocol=2))
    path.with_name(path.name + ".sha256").write_text(sha256_file(path))
    with pytest.raises(UserError, match="cannot be loaded safely"):
        load_checkpoint(path)
    assert not evidence.exists()
