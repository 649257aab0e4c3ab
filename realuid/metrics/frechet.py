"""Fréchet distance and precision/recall between two sets of features, and files of reference statistics.

Fréchet distance (Heusel et al. 2017, the distance behind FID) between the
Gaussians N(mu1, S1), N(mu2, S2) fitted to two feature sets:

    FD = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)

Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold
is the union of balls around its points of radius the distance to their k-th
nearest neighbour in the same set;

    precision = fraction of fake points inside the real manifold,
    recall    = fraction of real points inside the fake manifold.

Usage::

    mu1, sigma1 = gaussian_statistics(real_features)        # [N, D] -> [D], [D, D] (float64)
    mu2, sigma2 = gaussian_statistics(fake_features)
    frechet_distance(mu1, sigma1, mu2, sigma2)              # a float >= 0
    precision_recall(real_features, fake_features, k=3)     # (precision, recall)

Reference statistics files: :func:`read_reference_stats` reads ``{mu, sigma}``
from ``.npz`` (EDM / SiD fid-refs, clean-fid, pytorch-fid, ADM, ``realuid data
stats``) and ``.pt`` (torch-fidelity's cache) files and refuses malformed ones;
:func:`write_reference_stats` writes the ``.npz`` form.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch


def gaussian_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and unbiased covariance [D, D] (divided by N - 1, as numpy.cov) of features [N, D], float64."""
    features = features.double()
    mu = features.mean(0)
    centred = features - mu
    return mu, centred.T @ centred / (len(features) - 1)


def sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix via ``eigh`` (negative round-off -> 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982).

        d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)

    ``S1^1/2 S2 S1^1/2`` is symmetric PSD and has the eigenvalues of ``S1 S2``,
    so the last trace is the sum of square roots of its eigenvalues; all in float64.
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(a, dtype=torch.float64) for a in (mu1, mu2, sigma1, sigma2))
    root1 = sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * cross
    return float(value.clamp(min=0))


def kth_neighbour_radii(features: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Distance of each point to its k-th nearest other point in the same set."""
    radii = []
    for start in range(0, len(features), chunk):
        distances = torch.cdist(features[start:start + chunk], features)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # the 1st is the point itself (distance 0)
    return torch.cat(radii)


def coverage_fraction(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 4096) -> float:
    """Fraction of ``points`` inside at least one ball ``|p - centre_j| <= radius_j``."""
    inside = []
    for start in range(0, len(points), chunk):
        distances = torch.cdist(points[start:start + chunk], centres)
        inside.append((distances <= radii[None]).any(dim=1))
    return torch.cat(inside).float().mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls as manifold estimates.

    precision = fraction of fake points inside the real manifold (the union of
    balls around real points of radius the distance to their k-th real
    neighbour); recall = fraction of real points inside the fake manifold.
    """
    real, fake = real.float(), fake.float()
    precision = coverage_fraction(fake, real, kth_neighbour_radii(real, k))
    recall = coverage_fraction(real, fake, kth_neighbour_radii(fake, k))
    return precision, recall


def write_statistics(path: Path, statistics: dict) -> None:
    """Save reference statistics atomically: torch ``.pt`` (weights_only-loadable) or numpy ``.npz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.suffix == ".npz":
        with open(tmp, "wb") as f:
            np.savez(f, **{k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                           for k, v in statistics.items()})
    else:
        torch.save(statistics, tmp)
    os.replace(tmp, path)


def read_statistics(path: Path) -> dict | None:
    """Statistics saved by :func:`write_statistics`, or None when the file is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        if path.suffix == ".npz":
            with np.load(path) as arrays:
                return {k: (torch.from_numpy(v) if v.dtype.kind == "f" else v.item()) for k, v in arrays.items()}
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: recompute and overwrite it
        return None


# -- reference statistics files {mu, sigma} --------------------------------------------------------------------------
#: what :func:`read_reference_stats` reads, by file kind: the keys of the mean and the covariance
REFERENCE_FORMATS = {
    ".npz": "numpy archive with arrays 'mu' [D] and 'sigma' [D, D]: EDM / SiD fid-refs (np.savez(mu=, sigma=)), "
            "clean-fid stats, pytorch-fid / TTUR stats, ADM reference batches (their 'mu_s', 'sigma_s', 'arr_0' "
            "are ignored), `realuid data stats`",
    ".pt": "torch.save of a dict with 'mu' and 'sigma' (numpy arrays or tensors): torch-fidelity's cache files "
           "(TORCH_HOME/fidelity_cache/NAME-inception-v3-compat-stat-fid-2048.pt), realuid's own .pt statistics; "
           "read with weights_only=True (numpy arrays allowed, no code)",
}


def _numpy_safe_globals() -> list:
    """What a torch.save'd dict of numpy arrays needs under ``weights_only=True`` (and nothing that runs code)."""
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    allowed += [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int64, np.int32)]
    scalar = getattr(core.multiarray, "scalar", None)
    return allowed + ([scalar] if scalar is not None else [])


def read_reference_stats(path: str | os.PathLike, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu [D], sigma [D, D])`` as float64 tensors from a statistics file (:data:`REFERENCE_FORMATS`).

    Refused with a :class:`~realuid.errors.UserError` naming the file: a missing
    or unreadable file, no ``mu``/``sigma`` entry, ``mu`` not a vector,
    ``sigma`` not D x D (or ``D != dim`` when ``dim`` is given), a non-finite
    value, or a ``sigma`` that is not symmetric (max |S - S^T| above 1e-6 of
    max |S|).
    """
    from realuid.errors import UserError

    path = Path(path)
    where = str(path)
    fix = ("give a statistics file with arrays 'mu' [D] and 'sigma' [D, D] (.npz, or torch-fidelity's .pt cache), "
           "e.g. one written by `realuid data stats SHARDS --out FILE.npz`")
    if not path.is_file():
        raise UserError(f"the reference statistics file {path} does not exist", where, fix)
    try:
        if path.suffix == ".pt":
            from torch.serialization import safe_globals

            with safe_globals(_numpy_safe_globals()):
                content = torch.load(path, map_location="cpu", weights_only=True)
        else:
            with np.load(path, allow_pickle=False) as arrays:
                content = {k: arrays[k] for k in ("mu", "sigma") if k in arrays.files}
                content["__keys__"] = list(arrays.files)
    except Exception as err:   # not a zip / pickle, truncated, or a pickle that asks for code
        raise UserError(f"{path} cannot be read as a statistics file ({type(err).__name__}: {str(err)[:200]})",
                        where, fix) from None
    if not isinstance(content, dict):
        raise UserError(f"{path} holds a {type(content).__name__}, not a dict with 'mu' and 'sigma'", where, fix)
    missing = [k for k in ("mu", "sigma") if k not in content]
    if missing:
        keys = content.get("__keys__", [k for k in content if isinstance(k, str)])
        raise UserError(f"{path} has no {' or '.join(repr(k) for k in missing)} (its keys: "
                        f"{', '.join(map(str, keys)) or 'none'})", where, fix)
    try:
        mu = torch.as_tensor(np.asarray(content["mu"]), dtype=torch.float64)
        sigma = torch.as_tensor(np.asarray(content["sigma"]), dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: 'mu' / 'sigma' are not numeric arrays ({err})", where, fix) from None
    if mu.ndim != 1 or len(mu) < 1:
        raise UserError(f"{path}: 'mu' has shape {tuple(mu.shape)}, expected a vector [D]", where, fix)
    d = len(mu)
    if tuple(sigma.shape) != (d, d):
        raise UserError(f"{path}: 'sigma' has shape {tuple(sigma.shape)}, expected [{d}, {d}] to match 'mu'", where,
                        fix)
    if dim is not None and d != dim:
        raise UserError(f"{path} holds statistics of {d}-dimensional features, expected {dim} (Inception-v3 pool "
                        "features have 2048)", where, "use statistics computed with the same feature extractor")
    for name, value in (("mu", mu), ("sigma", sigma)):
        bad = (~torch.isfinite(value)).sum().item()
        if bad:
            raise UserError(f"{path}: '{name}' holds {bad} non-finite value(s) (NaN or Inf)", where,
                            "recompute the statistics (`realuid data stats ...`)")
    asymmetry = (sigma - sigma.T).abs().max().item()
    if asymmetry > 1e-6 * max(sigma.abs().max().item(), 1e-300):
        raise UserError(f"{path}: 'sigma' is not symmetric (max |S - S^T| = {asymmetry:.3g}, max |S| = "
                        f"{sigma.abs().max().item():.3g}), so it is not a covariance matrix", where,
                        "recompute the statistics (`realuid data stats ...`)")
    return mu, sigma


def write_reference_stats(path: str | os.PathLike, mu, sigma, **meta) -> None:
    """Save ``mu``, ``sigma`` (float64) and scalar/string ``meta`` atomically as an ``.npz`` (EDM / clean-fid keys)."""
    from realuid.io import atomic_write_bytes

    buffer = io.BytesIO()
    arrays = {"mu": np.asarray(torch.as_tensor(mu, dtype=torch.float64).numpy()),
              "sigma": np.asarray(torch.as_tensor(sigma, dtype=torch.float64).numpy())}
    arrays.update({k: np.asarray(v) for k, v in meta.items()})
    np.savez(buffer, **arrays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def frechet_distance_to_file(features: torch.Tensor, path: str | os.PathLike) -> float:
    """Fréchet distance between the Gaussian fitted to ``features`` [N, D] and a reference statistics file."""
    mu_ref, sigma_ref = read_reference_stats(path, dim=features.shape[1])
    mu, sigma = gaussian_statistics(features)
    return frechet_distance(mu, sigma, mu_ref, sigma_ref)
