"""FID and Inception Score through torch-fidelity, with a local Inception weights file (no download)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from realuid.context import RunContext
from realuid.errors import UserError
from realuid.metrics.base import Metric
from realuid.components import register

#: the file torch-fidelity downloads for its FID Inception-v3 (TF-compatible port of the 2015-12-05 graph)
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_NAME}"
WEIGHTS_ENV = "REALUID_INCEPTION_WEIGHTS"


class UInt8Images(torch.utils.data.Dataset):
    """A fixed set of uint8 images [N, 3, H, W] served one at a time, the input torch-fidelity expects."""

    def __init__(self, images: torch.Tensor):
        self.images = images.cpu()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


#: sha256 of that file as reported by a third-party project (not verified here: a mismatch only warns)
INCEPTION_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"


def inception_weights_path(path: str | None, where: str = "TorchFidelityFID.inception_weights",
                           stand_in: bool = True) -> Path:
    """The weights file to use (``path``, else ``$REALUID_INCEPTION_WEIGHTS``); a UserError if there is none.

    ``stand_in``: the fix also names the ClassifierFD metric (not where an Inception FID is what was asked for).
    """
    path = path or os.environ.get(WEIGHTS_ENV)
    fix = (f"download {INCEPTION_WEIGHTS_URL} on a machine with internet access, copy the file "
           f"{INCEPTION_WEIGHTS_NAME} (expected sha256 {INCEPTION_WEIGHTS_SHA256}) here, and pass it with "
           f"--inception-weights PATH (or bind TorchFidelityFID.inception_weights = 'PATH', or set "
           f"{WEIGHTS_ENV}=PATH)" + ("; without network access use the ClassifierFD metric instead" if stand_in else ""))
    if not path:
        raise UserError("FID/IS and Inception statistics need the Inception-v3 weights file and none was given "
                        "(realuid never downloads it: a download without network access hangs)", where, fix)
    if not Path(path).is_file():
        raise UserError(f"the Inception weights file {path} does not exist", where, fix)
    return Path(path)


#: the FID features: torch-fidelity's Inception-v3 pool layer
INCEPTION_DIM = 2048


def inception_extractor(weights: Path, device: torch.device | str = "cpu", where: str = "--inception-weights",
                        layers: tuple[str, ...] = ("2048",)):
    """torch-fidelity's FID feature extractor ('inception-v3-compat') from a local file, returning ``layers``.

    The same network, input check (uint8 [B, 3, H, W]) and TF-1.x-compatible
    bilinear resize to 299 x 299 that ``torch_fidelity.calculate_metrics`` uses
    for FID ("2048", the pool features) and IS ("logits_unbiased"). A file
    whose sha256 differs from :data:`INCEPTION_WEIGHTS_SHA256` is used with a
    warning.
    """
    from realuid.errors import warn
    from realuid.io import sha256_file

    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        raise UserError("Inception features need torch-fidelity, which is not installed", where,
                        "pip install torch-fidelity") from err
    digest = sha256_file(weights)
    if digest != INCEPTION_WEIGHTS_SHA256:
        warn(f"{weights} has sha256 {digest[:12]}..., not the {INCEPTION_WEIGHTS_SHA256[:12]}... reported for "
             f"{INCEPTION_WEIGHTS_NAME}: statistics made with it may not match published ones")
    try:
        extractor = FeatureExtractorInceptionV3("inception-v3-compat", list(layers),
                                                feature_extractor_weights_path=str(weights))
    except Exception as err:   # not a state dict, wrong keys or shapes
        raise UserError(f"the Inception weights file {weights} cannot be loaded ({type(err).__name__}: "
                        f"{str(err)[:200]})", where, f"give torch-fidelity's {INCEPTION_WEIGHTS_NAME}") from None
    return extractor.to(device).eval()


def extractor_outputs(extractor, batches, device: torch.device | str = "cpu", progress=None) -> tuple:
    """One float32 CPU tensor [N, dim] per layer of ``extractor`` over uint8 image batches [B, 3, H, W]."""
    outputs = None
    with torch.no_grad():
        for batch in batches:
            result = [o.float().cpu() for o in extractor(batch.to(device))]
            outputs = [[o] for o in result] if outputs is None else [a + [o] for a, o in zip(outputs, result)]
            if progress is not None:
                progress(len(batch))
    if outputs is None:
        raise ValueError("no images to extract features from")
    return tuple(torch.cat(o) for o in outputs)


def inception_features(batches, weights: Path, device: torch.device | str = "cpu", progress=None) -> torch.Tensor:
    """float32 [N, 2048] Inception pool features of uint8 image batches [B, 3, H, W] (any H, W)."""
    return extractor_outputs(inception_extractor(weights, device), batches, device, progress)[0]


def feature_statistics(features: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 mean [D] and covariance [D, D] (divided by N - 1, as numpy.cov) of features [N, D], two passes in
    chunks so that N x D is never converted to float64 at once."""
    n, d = features.shape
    total = torch.zeros(d, dtype=torch.float64)
    for start in range(0, n, chunk):
        total += features[start:start + chunk].double().sum(0)
    mu = total / n
    scatter = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, chunk):
        centred = features[start:start + chunk].double() - mu
        scatter += centred.T @ centred
    return mu, scatter / (n - 1)


@register("metric")
class TorchFidelityFID(Metric):
    """FID (Heusel et al. 2017) and Inception Score (Salimans et al. 2016) via torch-fidelity, against CIFAR-10 shards.

    ``FID = |mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^1/2)`` over Inception-v3
    pool features (2048-d) of the generated samples (quantised to uint8) and of
    the reference split of the shards; ``IS = exp(E_x KL(p(y|x) || p(y)))`` of
    the generated samples, mean and std over 10 splits. The reference
    features are cached by torch-fidelity under a name tied to the shards.
    The Inception weights are read from a local file and never downloaded.
    The shards were re-encoded as JPEG, so values are not comparable with
    published CIFAR-10 FIDs (see shared/data/cifar10/README.md).

    Other data (any resolution, e.g. :class:`~realuid.data.shards.ImageShards`
    at 64x64) needs ``reference_stats``: a ``{mu, sigma}`` file (``realuid data
    stats SHARDS --out FILE.npz``, or EDM / clean-fid / torch-fidelity files,
    see :func:`realuid.metrics.frechet.read_reference_stats`); the FID is then
    the Fréchet distance between the samples' Inception features (the same
    extractor and resize) and that file.

    Usage::

        metric = TorchFidelityFID(inception_weights="weights-inception-2015-12-05-6726825d.pth")
        metric(samples)          # {"fid": ..., "is": ..., "is_std": ...}

    Args:
        inception_weights: path of ``weights-inception-2015-12-05-6726825d.pth``
            (default ``$REALUID_INCEPTION_WEIGHTS``).
        reference_split: CIFAR-10 split of the reference ("train", the usual 50k, or "test").
        num_samples: how many samples the caller should generate (50,000 for reported FIDs).
        root: CIFAR-10 shard folder (default as :class:`CIFAR10Shards`).
        reference_limit: use only the first images of the split (smoke tests).
        batch_size: images per Inception forward pass.
        inception_score: also compute the Inception Score.
        cache_root: torch-fidelity's feature cache folder (default ``$TORCH_HOME/fidelity_cache``).
        reference_stats: a ``{mu, sigma}`` statistics file to compare with instead of the CIFAR-10 shards.
    """

    def __init__(self, inception_weights: str | None = None, reference_split: str = "train",
                 num_samples: int = 50000, root: str | None = None, reference_limit: int | None = None,
                 batch_size: int = 200, inception_score: bool = True, cache_root: str | None = None,
                 reference_stats: str | None = None):
        self.weights = inception_weights_path(inception_weights)   # fail at construction, not after sampling
        self.reference_stats = None
        if reference_stats is not None:
            from realuid.metrics.frechet import read_reference_stats

            read_reference_stats(reference_stats, dim=2048)          # a bad file fails now, not after sampling
            self.reference_stats = reference_stats
        self.reference_split, self.root, self.reference_limit = reference_split, root, reference_limit
        self.num_samples, self.batch_size = num_samples, batch_size
        self.inception_score, self.cache_root = inception_score, cache_root
        self._reference: UInt8Images | None = None
        self._reference_name = ""
        self._extractor = None

    def attach(self, context: RunContext) -> "TorchFidelityFID":
        """Check the run's data: RGB images, CIFAR-shaped unless ``reference_stats`` is given; the shard folder."""
        data = context.data
        shape = tuple(data.shape)
        if len(shape) != 3 or shape[0] != 3:
            raise UserError(f"TorchFidelityFID measures RGB images (CIFAR-10's 32x32 RGB, or any 3 x H x W with "
                            f"reference_stats); the run's data have shape {shape}", "TorchFidelityFID",
                            "drop it from the metrics for non-image data")
        if shape != (3, 32, 32) and self.reference_stats is None:
            raise UserError(f"TorchFidelityFID compares with CIFAR-10 (32x32 RGB) unless it is given reference "
                            f"statistics; the run's data have shape {shape}", "TorchFidelityFID.reference_stats",
                            "compute them with `realuid data stats SHARDS --out stats.npz --inception-weights PATH` "
                            "and bind TorchFidelityFID.reference_stats = 'stats.npz'")
        if self.root is None and getattr(data, "root", None) is not None:
            self.root = data.root
        return self

    def reference(self) -> UInt8Images:
        if self._reference is None:
            from realuid.data.cifar import find_shards, read_cifar10, shard_fingerprint

            images, _ = read_cifar10(self.root, self.reference_split, self.reference_limit)
            fingerprint = shard_fingerprint(find_shards(self.root, self.reference_split))
            self._reference = UInt8Images(images)
            self._reference_name = (f"realuid-cifar10-{self.reference_split}-{len(images)}-{fingerprint}")
        return self._reference

    def __call__(self, samples: torch.Tensor) -> dict[str, float]:
        from realuid.pictures import quantize

        try:
            import torch_fidelity
        except ImportError as err:
            raise UserError("the TorchFidelityFID metric needs torch-fidelity, which is not installed",
                            "TorchFidelityFID", "pip install torch-fidelity") from err
        images = quantize(samples)
        if images.ndim != 4 or images.shape[1] != 3:
            raise UserError(f"TorchFidelityFID needs RGB images, got shape {tuple(samples.shape)}",
                            "TorchFidelityFID", "pass float [N, 3, H, W] in [-1, 1] or uint8 [N, H, W, 3]")
        if self.reference_stats is not None:
            return self._against_file(images, torch_fidelity)
        reference = self.reference()
        kwargs = dict(input1=UInt8Images(images), input2=reference, input2_cache_name=self._reference_name,
                      fid=True, isc=self.inception_score, feature_extractor_weights_path=str(self.weights),
                      cuda=torch.cuda.is_available(), batch_size=self.batch_size, verbose=False)
        if self.cache_root is not None:
            kwargs["cache_root"] = self.cache_root
        scores = torch_fidelity.calculate_metrics(**kwargs)
        result = {"fid": float(scores[torch_fidelity.KEY_METRIC_FID])}
        if self.inception_score:
            result.update({"is": float(scores[torch_fidelity.KEY_METRIC_ISC_MEAN]),
                           "is_std": float(scores[torch_fidelity.KEY_METRIC_ISC_STD])})
        return result

    def _against_file(self, images: torch.Tensor, torch_fidelity) -> dict[str, float]:
        """FID against ``reference_stats`` and IS, from one pass of the extractor over the samples.

        The pool features ("2048") give the FID; the IS is torch-fidelity's own
        formula (``isc_features_to_metric``, its default 10 splits, shuffle and
        seed) on its IS layer ("logits_unbiased") of the same pass.
        """
        from torch_fidelity.defaults import DEFAULTS
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        from torch_fidelity.metric_isc import isc_features_to_metric

        from realuid.metrics.frechet import frechet_distance_to_file

        device = "cuda" if torch.cuda.is_available() else "cpu"
        layers = (str(INCEPTION_DIM),)
        if self.inception_score:
            layers += (FeatureExtractorInceptionV3.get_default_feature_layer_for_metric("isc"),)
        if self._extractor is None or self._extractor[0] != layers:   # built once, kept for the next call
            self._extractor = (layers, inception_extractor(self.weights, device, "TorchFidelityFID.inception_weights",
                                                           layers))
        batches = (images[i:i + self.batch_size] for i in range(0, len(images), self.batch_size))
        outputs = extractor_outputs(self._extractor[1], batches, device)
        result = {"fid": frechet_distance_to_file(outputs[0], self.reference_stats)}
        if self.inception_score:
            if len(images) < DEFAULTS["isc_splits"]:
                from realuid.errors import warn

                warn(f"the Inception Score of {len(images)} samples is NaN: torch-fidelity splits the samples into "
                     f"{DEFAULTS['isc_splits']} parts (give --num {DEFAULTS['isc_splits']} or more)")
            scores = isc_features_to_metric(outputs[1], DEFAULTS["isc_splits"], DEFAULTS["samples_shuffle"],
                                            DEFAULTS["rng_seed"])
            result.update({"is": float(scores[torch_fidelity.KEY_METRIC_ISC_MEAN]),
                           "is_std": float(scores[torch_fidelity.KEY_METRIC_ISC_STD])})
        return result
