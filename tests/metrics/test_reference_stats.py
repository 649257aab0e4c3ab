"""Reference statistics files {mu, sigma}: the formats read, refusals, and `realuid data stats` with torch-fidelity.

The Inception weights cannot be downloaded here, so the end-to-end test saves a
randomly initialised torch-fidelity Inception-v3 as the weights file: the
features are meaningless, the pipeline (decoding, torch-fidelity's extractor
and resize, statistics, file) is the real one.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from realuid.cli.app import app
from realuid.errors import UserError
from realuid.metrics.fidelity import INCEPTION_WEIGHTS_NAME, INCEPTION_WEIGHTS_SHA256, feature_statistics
from realuid.metrics.frechet import (frechet_distance, frechet_distance_to_file, gaussian_statistics,
                                     read_reference_stats, write_reference_stats)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def features():
    """Two correlated 64-d feature sets (float64), the second shifted and rescaled."""
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(64, 64, generator=generator, dtype=torch.float64) / 8
    real = torch.randn(3000, 64, generator=generator, dtype=torch.float64) @ mixing
    fake = 1.1 * torch.randn(2000, 64, generator=generator, dtype=torch.float64) @ mixing + 0.05
    return real, fake


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_fd_from_each_file_format_equals_fd_from_raw_features(features, tmp_path):
    real, fake = features
    direct = frechet_distance(*gaussian_statistics(real), *gaussian_statistics(fake))
    assert direct > 0.01
    x = real.numpy()
    mu, sigma = np.mean(x, axis=0), np.cov(x, rowvar=False)
    files = {}
    write_reference_stats(tmp_path / "realuid.npz", *feature_statistics(real.float().double()), num_images=3000)
    files["realuid.npz"] = tmp_path / "realuid.npz"
    np.savez(tmp_path / "clean_fid.npz", mu=mu, sigma=sigma)                       # clean-fid / EDM / pytorch-fid
    files["clean_fid.npz"] = tmp_path / "clean_fid.npz"
    np.savez(tmp_path / "adm.npz", mu=mu, sigma=sigma, mu_s=mu[:8], sigma_s=sigma[:8, :8],
             arr_0=np.zeros((2, 4, 4, 3), np.uint8))                               # an ADM reference batch
    files["adm.npz"] = tmp_path / "adm.npz"
    torch.save({"mu": mu, "sigma": sigma}, tmp_path / "fidelity-stat-fid-2048.pt")  # torch-fidelity's cache file
    files["torch-fidelity.pt"] = tmp_path / "fidelity-stat-fid-2048.pt"
    torch.save({"mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma)}, tmp_path / "tensors.pt")
    files["tensors.pt"] = tmp_path / "tensors.pt"
    for name, path in files.items():
        mu_file, sigma_file = read_reference_stats(path)
        assert mu_file.dtype == torch.float64 and mu_file.shape == (64,) and sigma_file.shape == (64, 64)
        from_file = frechet_distance(*gaussian_statistics(fake), mu_file, sigma_file)
        assert relative(from_file, direct) < 1e-6, name
        assert relative(frechet_distance_to_file(fake, path), direct) < 1e-6, name
    # torch-fidelity's own formula on the same statistics agrees (eigenvalues of S1 S2 in complex128)
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    theirs = fid_statistics_to_metric({"mu": mu, "sigma": sigma},
                                      dict(zip(("mu", "sigma"), (a.numpy() for a in gaussian_statistics(fake)))),
                                      False)[KEY_METRIC_FID]
    assert relative(theirs, direct) < 1e-6
    # calibration: statistics of a different set are told apart
    shifted = frechet_distance(*gaussian_statistics(fake), *read_reference_stats(files["clean_fid.npz"]))
    assert relative(frechet_distance(*gaussian_statistics(fake + 0.01), *gaussian_statistics(real)), shifted) > 1e-3


def test_bad_statistics_files_are_refused_clearly(tmp_path):
    mu, sigma = np.zeros(4), np.eye(4)
    cases = {
        "missing.npz": (None, "does not exist"),
        "no_sigma.npz": (dict(mu=mu, cov=sigma), "has no 'sigma' .*its keys: mu, cov"),
        "matrix_mu.npz": (dict(mu=np.zeros((4, 1)), sigma=sigma), r"'mu' has shape \(4, 1\), expected a vector"),
        "wrong_sigma.npz": (dict(mu=mu, sigma=np.eye(5)), r"'sigma' has shape \(5, 5\), expected \[4, 4\]"),
        "nan.npz": (dict(mu=mu, sigma=np.where(np.eye(4) > 0, np.nan, 0)), "'sigma' holds 4 non-finite"),
        "inf_mu.npz": (dict(mu=np.array([0, np.inf, 0, 0]), sigma=sigma), "'mu' holds 1 non-finite"),
        "asymmetric.npz": (dict(mu=mu, sigma=np.eye(4) + np.triu(np.ones((4, 4)), 1) * 0.1), "not symmetric"),
    }
    for name, (arrays, message) in cases.items():
        if arrays is not None:
            np.savez(tmp_path / name, **arrays)
        with pytest.raises(UserError, match=message) as err:
            read_reference_stats(tmp_path / name)
        assert str(tmp_path / name) in err.value.where
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot be read as a statistics file"):
        read_reference_stats(tmp_path / "garbage.npz")
    np.savez(tmp_path / "small.npz", mu=mu, sigma=sigma)
    with pytest.raises(UserError, match="4-dimensional features, expected 2048"):
        read_reference_stats(tmp_path / "small.npz", dim=2048)
    assert read_reference_stats(tmp_path / "small.npz", dim=4)[0].shape == (4,)      # calibration: a good file


class _Boom:
    def __reduce__(self):
        return (print, ("a pickle ran code",))


def test_a_pt_file_that_would_run_code_is_refused(tmp_path, capsys):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"mu": _Boom(), "sigma": np.eye(2)}, f, protocol=2)
    with pytest.raises(UserError, match="cannot be read as a statistics file"):
        read_reference_stats(tmp_path / "evil.pt")
    assert "a pickle ran code" not in capsys.readouterr().out


# -- `realuid data stats` --------------------------------------------------------------------------------------------
def random_inception_weights(path) -> None:
    """A torch-fidelity Inception-v3 with random weights (N(0, 1)-free defaults), saved as a weights file."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    original = fe.FeatureExtractorInceptionV3.load_state_dict
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None
    saved_url = fe.load_state_dict_from_url
    fe.load_state_dict_from_url = lambda *a, **k: None       # never the network
    try:
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        fe.FeatureExtractorInceptionV3.load_state_dict = original
        fe.load_state_dict_from_url = saved_url
    torch.save(model.state_dict(), path)


def write_pngs(folder, count: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(4)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def test_stats_without_weights_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.delenv("REALUID_INCEPTION_WEIGHTS", raising=False)
    write_pngs(tmp_path / "images", 2)
    result = CliRunner().invoke(app, ["data", "stats", str(tmp_path / "images"), "--out", str(tmp_path / "s.npz")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in text
    assert INCEPTION_WEIGHTS_NAME in text and INCEPTION_WEIGHTS_SHA256 in text and "--inception-weights" in text
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.slow
def test_stats_of_a_shard_folder_and_of_its_images_match_torch_fidelity(tmp_path):
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    from realuid.data.pack import pack_images
    from realuid.metrics.fidelity import UInt8Images

    weights = tmp_path / INCEPTION_WEIGHTS_NAME
    random_inception_weights(weights)
    write_pngs(tmp_path / "images", 10)
    pack_images(tmp_path / "images", tmp_path / "shards", shard_size=4)
    runner = CliRunner()
    for name, source in (("shards", tmp_path / "shards"), ("images", tmp_path / "images")):
        result = runner.invoke(app, ["data", "stats", str(source), "--out", str(tmp_path / f"{name}.npz"),
                                     "--inception-weights", str(weights), "--device", "cpu", "--batch-size", "4"])
        assert result.exit_code == 0, result.output
    mu_shards, sigma_shards = read_reference_stats(tmp_path / "shards.npz", dim=2048)
    mu_images, sigma_images = read_reference_stats(tmp_path / "images.npz", dim=2048)
    # PNG is lossless, so the same images in another order: the same statistics up to summation order
    assert torch.allclose(mu_shards, mu_images, rtol=1e-10, atol=1e-12)
    assert torch.allclose(sigma_shards, sigma_images, rtol=1e-8, atol=1e-12)
    # torch-fidelity's own feature loop on the same images, its statistics formula (np.mean, np.cov)
    from PIL import Image

    images = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)
                          for p in sorted((tmp_path / "images").glob("*.png"))])
    extractor = create_feature_extractor("inception-v3-compat", ["2048"], cuda=False,
                                         feature_extractor_weights_path=str(weights), verbose=False)
    theirs = get_featuresdict_from_dataset(UInt8Images(images), extractor, 4, False, True, False)["2048"]
    x = theirs.double().numpy()
    assert np.allclose(mu_images.numpy(), x.mean(0), rtol=1e-9, atol=1e-12)
    assert np.allclose(sigma_images.numpy(), np.cov(x, rowvar=False), rtol=1e-7, atol=1e-12)
    assert float(sigma_images.diagonal().sum()) > 0                  # calibration: the features are not constant
    with np.load(tmp_path / "images.npz") as saved:
        assert int(saved["num_images"]) == 10 and "inception-v3-compat" in str(saved["feature_extractor"])
