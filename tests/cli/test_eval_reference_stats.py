"""`realuid eval --ref-stats FILE --seeds K`: FID against a statistics file, over K sample sets, and its refusals.

The Inception weights cannot be downloaded here, so a randomly initialised
torch-fidelity Inception-v3 is saved as the weights file (its convolutions
scaled by sqrt(6) so that the pool features are of order 0.3, not 1e-8): the
features mean nothing, the pipeline (extractor, resize, statistics file,
Fréchet distance, IS) is the real one. The model is a tiny 16x16 U-Net teacher
written as an export folder.
"""

from __future__ import annotations

import json
import math
import statistics
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from realuid.cli import app
from realuid.io import sha256_file
from realuid.metrics.fidelity import INCEPTION_WEIGHTS_NAME, INCEPTION_WEIGHTS_SHA256

pytestmark = pytest.mark.usefixtures("one_thread")

NOTE = "offline stand-in: a CIFAR-10 classifier's features, not Inception; not comparable with published FID"


def cli(*args):
    """Invoke realuid in-process, with sys.argv as a real process would have it (the JSON records the command)."""
    from unittest import mock

    args = [str(a) for a in args]
    with mock.patch.object(sys, "argv", ["realuid", *args]):
        result = CliRunner().invoke(app, args)
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def assert_user_error(code: int, text: str, *fragments: str) -> None:
    assert code == 2, text
    assert text.startswith("error:") and " Where: " in text and " Fix: " in text and "Traceback" not in text, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A torch-fidelity Inception-v3 with random weights, saved under the real file's name."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    load, fetch = fe.FeatureExtractorInceptionV3.load_state_dict, fe.load_state_dict_from_url
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None
    fe.load_state_dict_from_url = lambda *a, **k: None       # never the network
    try:
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        fe.FeatureExtractorInceptionV3.load_state_dict, fe.load_state_dict_from_url = load, fetch
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.mul_(math.sqrt(6))
    path = tmp_path_factory.mktemp("inception") / INCEPTION_WEIGHTS_NAME
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """An export folder of an untrained 16x16 U-Net rectified-flow teacher (its output conv made non-zero)."""
    from safetensors.torch import save_file

    from realuid.networks.unet import UNet

    kwargs = dict(img_channels=3, img_resolution=16, model_channels=8, channel_mult=[1], num_res_blocks=1,
                  attn_resolutions=[], num_heads=1, dropout=0.0)
    torch.manual_seed(1)
    network = UNet(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    tensors = {k: v.contiguous() + (0.05 * torch.randn_like(v) if k.startswith("out") else 0)
               for k, v in network.state_dict().items()}
    folder = tmp_path_factory.mktemp("export") / "teacher"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    config = {"format": "realuid-export", "format_version": 1, "kind": "teacher", "weights": "network",
              "backbone": {"name": "UNet", "kwargs": kwargs}, "path": {"name": "RectifiedFlow", "kwargs": {}},
              "parameterization": "velocity", "shape": [3, 16, 16], "resolution": 16, "num_classes": 0,
              "condition": None, "training": {"checkpoint": "runs/t/checkpoints/step_00000010.pt",
                                              "checkpoint_sha256": "ab" * 32, "step": 10},
              "weights_sha256": sha256_file(folder / "model.safetensors")}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def frechet_from_features(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID of two small feature sets [n, D], [m, D] from the features themselves, not from D x D statistics.

    With centred features A, B and S_a = A^T A / (n - 1), S_b = B^T B / (m - 1), the non-zero eigenvalues of
    S_a S_b are the squared singular values of C = A B^T / sqrt((n - 1)(m - 1)), so
    tr (S_a^1/2 S_b S_a^1/2)^1/2 is the sum of C's singular values: an n x m problem instead of D x D.
    """
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    centred_a, centred_b = a - mu_a, b - mu_b
    trace_a = centred_a.square().sum() / (len(a) - 1)
    trace_b = centred_b.square().sum() / (len(b) - 1)
    cross = torch.linalg.svdvals(centred_a @ centred_b.T / math.sqrt((len(a) - 1) * (len(b) - 1))).sum()
    return float((mu_a - mu_b).square().sum() + trace_a + trace_b - 2 * cross)


def write_pngs(images: np.ndarray, folder) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")


@pytest.mark.slow   # four Inception passes over 16 images and two 2048 x 2048 Fréchet distances on one thread: 35-45 s
def test_fid_against_a_statistics_file_over_two_seeds(teacher, weights, tmp_path, monkeypatch):
    import torch_fidelity

    import realuid.metrics.fidelity as fidelity

    monkeypatch.chdir(tmp_path)                    # no registry/checkpoints/fd_classifier.pt by default
    calls = []                                     # (uint8 images, outputs) of every Inception pass
    real = fidelity.extractor_outputs

    def recording(extractor, batches, device="cpu", progress=None):
        batches = list(batches)
        outputs = real(extractor, batches, device, progress)
        calls.append((torch.cat(batches), outputs))
        return outputs

    monkeypatch.setattr(fidelity, "extractor_outputs", recording)
    sampler = ["--nfe", "1", "--solver", "euler", "--batch-size", "16", "--device", "cpu"]
    code, _, err = cli("sample", teacher, "--num", 16, "--seed", 0, "--out", tmp_path / "seed0", *sampler)
    assert code == 0, err
    with np.load(tmp_path / "seed0" / "samples.npz") as arrays:
        write_pngs(arrays["images"], tmp_path / "reference")     # the reference: the images of seed 0, lossless
    code, _, err = cli("data", "stats", tmp_path / "reference", "--out", tmp_path / "ref.npz", "--inception-weights",
                       weights, "--device", "cpu", "--batch-size", 16)
    assert code == 0, err
    code, out, err = cli("eval", teacher, "--ref-stats", tmp_path / "ref.npz", "--inception-weights", weights,
                         "--seeds", 2, "--num", 16, "--json", tmp_path / "eval.json", *sampler)
    assert code == 0, err
    info = json.loads((tmp_path / "eval.json").read_text())

    fid = info["summary"]["fid"]
    assert len(fid["per_seed"]) == 2 and fid["mean"] == pytest.approx(statistics.fmean(fid["per_seed"]), rel=1e-12)
    assert fid["std"] == pytest.approx(statistics.stdev(fid["per_seed"]), rel=1e-12)   # ddof = 1
    assert fid["std"] == pytest.approx(abs(fid["per_seed"][0] - fid["per_seed"][1]) / math.sqrt(2), rel=1e-9)
    assert info["metrics"]["fid"] == fid["mean"] and set(info["summary"]) == {"fid", "is", "is_std"}
    assert [run["seed"] for run in info["per_seed"]] == info["seeds"] == [0, 1]
    assert info["num_samples"] == 16 and all(run["num_samples"] == 16 for run in info["per_seed"])
    reference = info["reference"]
    assert reference["name"] == "ref.npz" and reference["sha256"] == sha256_file(tmp_path / "ref.npz")
    assert reference["dim"] == 2048 and reference["num_images"] == 16
    assert info["inception_weights"]["sha256"] == sha256_file(weights)
    assert info["inception_weights"]["name"] == INCEPTION_WEIGHTS_NAME
    assert info["inception_weights"]["matches_expected"] is False            # a random network, not the real file
    assert info["inception_weights"]["expected_sha256"] == INCEPTION_WEIGHTS_SHA256
    assert {k: info["sampler"][k] for k in ("nfe", "solver", "cfg")} == {"nfe": 1, "solver": "euler", "cfg": 1.0}
    assert info["model"]["source"] == str(teacher) and info["model"]["kind"] == "teacher"
    assert info["model"]["checkpoint_sha256"] == sha256_file(teacher / "model.safetensors")
    assert info["model"]["trained_checkpoint_sha256"] == "ab" * 32
    assert "--seeds 2" in info["command"] and "--ref-stats" in info["command"]
    assert "fd_classifier" not in info["summary"] and "fd_classifier_note" not in info

    # the passes: data stats (the reference images), then seed 0 and seed 1 (pool features and IS logits)
    assert len(calls) == 3 and [len(images) for images, _ in calls] == [16, 16, 16]
    reference_features, (seed0_images, seed0_outputs), (seed1_images, seed1_outputs) = calls[0][1][0], *calls[1:]
    assert torch.equal(seed0_images, calls[0][0])          # --seed 0 of eval draws the images `sample --seed 0` drew
    assert not torch.equal(seed1_images, seed0_images)     # and seed 1 others
    # the FID from the statistics file equals the FID against the reference images' own features (to 1e-5: with
    # 16 samples of 2048-d features the covariances have rank 15, and the D x D route sums the square roots of
    # ~2000 round-off eigenvalues; with N > D samples that error vanishes)
    print("per-seed FID", fid["per_seed"])
    for outputs, value in ((seed0_outputs, fid["per_seed"][0]), (seed1_outputs, fid["per_seed"][1])):
        direct = frechet_from_features(outputs[0], reference_features)
        assert value == pytest.approx(direct, rel=1e-5, abs=1e-5)
    assert fid["per_seed"][0] < 1e-4 * fid["per_seed"][1]  # the reference's own images: FID 0 ...
    assert fid["per_seed"][1] > 1e-3                       # ... others: calibration, the distance can be seen
    # the IS from the same pass equals torch-fidelity's own (its second pass over the seed-1 images)
    theirs = torch_fidelity.calculate_metrics(input1=fidelity.UInt8Images(seed1_images), isc=True,
                                              feature_extractor_weights_path=str(weights), cuda=False,
                                              batch_size=16, save_cpu_ram=True, verbose=False)
    assert info["per_seed"][1]["metrics"]["is"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_ISC_MEAN], rel=1e-6)
    assert info["per_seed"][1]["metrics"]["is_std"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_ISC_STD],
                                                                     rel=1e-5, abs=1e-9)


@pytest.fixture
def good_stats(tmp_path):
    np.savez(tmp_path / "good.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    return tmp_path / "good.npz"


def test_without_inception_weights_says_where_to_put_them(teacher, good_stats, monkeypatch):
    monkeypatch.delenv("REALUID_INCEPTION_WEIGHTS", raising=False)
    code, _, err = cli("eval", teacher, "--ref-stats", good_stats, "--nfe", "1", "--num", 4, "--device", "cpu")
    assert_user_error(code, err, "need the Inception-v3 weights file and none was given", "Where: --inception-weights",
                      "--inception-weights PATH", "REALUID_INCEPTION_WEIGHTS=PATH", INCEPTION_WEIGHTS_NAME,
                      f"expected sha256 {INCEPTION_WEIGHTS_SHA256}")
    assert "--no-fid" not in err and "ClassifierFD" not in err   # an Inception FID against the file was asked for
    code, _, err = cli("eval", teacher, "--ref-stats", good_stats, "--inception-weights", good_stats.parent / "no.pth",
                       "--nfe", "1")
    assert_user_error(code, err, "the Inception weights file", "no.pth does not exist", INCEPTION_WEIGHTS_SHA256)


def bad_stats(tmp_path, case: str):
    arrays = {"shape": dict(mu=np.zeros(2048), sigma=np.eye(4)),
              "asymmetric": dict(mu=np.zeros(4), sigma=np.eye(4) + np.triu(np.ones((4, 4)), 1) * 0.1),
              "dim": dict(mu=np.zeros(4), sigma=np.eye(4)),
              "keys": dict(mean=np.zeros(4), cov=np.eye(4))}.get(case)
    if arrays is not None:
        np.savez(tmp_path / f"{case}.npz", **arrays)
    return tmp_path / f"{case}.npz"


@pytest.mark.parametrize("case, args, expected", [
    ("seeds-zero", ["--seeds", "0"], ["--seeds must be from 1 to 1,000", "got 0", "Where: --seeds"]),
    ("seeds-negative", ["--seeds", "-1"], ["--seeds must be from 1 to 1,000", "got -1"]),
    ("seeds-huge", ["--seeds", "1001"], ["--seeds must be from 1 to 1,000", "got 1,001"]),
    ("seeds-huger", ["--seeds", str(10**12)], ["--seeds must be from 1 to 1,000", "got 1,000,000,000,000"]),
    ("missing", ["--ref-stats", "{tmp}/missing.npz"], ["the reference statistics file {tmp}/missing.npz does not "
                                                       "exist", "Where: --ref-stats {tmp}/missing.npz"]),
    ("shape", ["--ref-stats", "{tmp}/shape.npz"], ["'sigma' has shape (4, 4), expected [2048, 2048] to match 'mu'"]),
    ("asymmetric", ["--ref-stats", "{tmp}/asymmetric.npz"], ["'sigma' is not symmetric", "recompute the statistics"]),
    ("keys", ["--ref-stats", "{tmp}/keys.npz"], ["has no 'mu' or 'sigma' (its keys: mean, cov)"]),
    ("dim", ["--ref-stats", "{tmp}/dim.npz"], ["holds statistics of 4-dimensional features; FID compares Inception-v3 "
                                               "pool features, which have 2048", "Where: --ref-stats {tmp}/dim.npz",
                                               "realuid data stats"]),
    ("no-fid", ["--ref-stats", "{tmp}/good.npz", "--no-fid"], ["--no-fid turns FID off"]),
])
def test_bad_inputs_exit_2_before_any_model_or_network(case, args, expected, good_stats, tmp_path, monkeypatch):
    """SOURCE is a model that does not exist and no weights are given: the refusal comes before either is looked at."""
    monkeypatch.delenv("REALUID_INCEPTION_WEIGHTS", raising=False)
    bad_stats(tmp_path, case)
    code, _, err = cli("eval", "no_such_model", "--nfe", "1", *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert_user_error(code, err, *[e.replace("{tmp}", str(tmp_path)) for e in expected])


def test_seeds_of_a_samples_file_are_refused_and_a_good_file_goes_on(good_stats, tmp_path, monkeypatch):
    monkeypatch.delenv("REALUID_INCEPTION_WEIGHTS", raising=False)
    np.savez(tmp_path / "samples.npz", images=np.zeros((4, 16, 16, 3), np.uint8))
    code, _, err = cli("eval", tmp_path / "samples.npz", "--ref-stats", good_stats, "--seeds", 3)
    assert_user_error(code, err, "--seeds 3 samples a model 3 times", "is a file of samples", "Where: --seeds")
    # calibration of the cases above: valid --seeds and --ref-stats go on to the next check (the weights)
    code, _, err = cli("eval", "no_such_model", "--nfe", "1", "--seeds", 1000, "--ref-stats", good_stats)
    assert_user_error(code, err, "need the Inception-v3 weights file")


def test_the_classifier_fd_is_labelled_as_the_offline_stand_in(tmp_path, monkeypatch):
    """--no-fid with a classifier on a samples file: fd_classifier and its note, side by side (CIFAR shards needed)."""
    from helpers import SHARDS, tiny_classifier
    from realuid.metrics.classifier import save_classifier

    if not (SHARDS / "test-000000.tar.gz").is_file():
        pytest.skip("no CIFAR-10 shards")
    monkeypatch.setenv("REALUID_CIFAR10", str(SHARDS))
    save_classifier(tiny_classifier(), tmp_path / "clf.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "samples.npz", images=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    code, out, err = cli("eval", tmp_path / "samples.npz", "--no-fid", "--fd-classifier", tmp_path / "clf.pt",
                         "--reference-split", "test", "--reference-limit", 32, "--json", tmp_path / "eval.json")
    assert code == 0, err
    info = json.loads((tmp_path / "eval.json").read_text())
    assert info["fd_classifier_note"] == NOTE and np.isfinite(info["metrics"]["fd_classifier"])
    assert info["summary"]["fd_classifier"]["std"] is None and len(info["summary"]["fd_classifier"]["per_seed"]) == 1
    assert "offline stand-in" in " ".join(out.split())


def test_a_classifier_asked_for_samples_it_cannot_read_is_refused(tmp_path):
    from helpers import tiny_classifier
    from realuid.metrics.classifier import save_classifier

    save_classifier(tiny_classifier(), tmp_path / "clf.pt")
    np.savez(tmp_path / "samples.npz", images=np.zeros((4, 16, 16, 3), np.uint8))
    code, _, err = cli("eval", tmp_path / "samples.npz", "--no-fid", "--fd-classifier", tmp_path / "clf.pt")
    assert_user_error(code, err, "the FD classifier reads 32x32 RGB images and the samples are 16x16",
                      "Where: --fd-classifier")
