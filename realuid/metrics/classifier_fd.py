"""ClassifierFD, the offline stand-in for FID: Fréchet distance in a CIFAR-10 classifier's features, not Inception's.

The same Fréchet distance between Gaussians fitted to features as FID
(Heusel et al. 2017; :mod:`realuid.metrics.frechet`), but the features are the
penultimate layer of a compact ResNet trained here on the CIFAR-10 shards
(:mod:`realuid.metrics.classifier`, ``tools/train_fd_classifier.py``), so it
needs no download. Its values are not comparable with published FIDs; use it
to compare runs with each other (:class:`~realuid.metrics.fidelity.TorchFidelityFID`
is the real FID, given the Inception weights).
"""

from __future__ import annotations

from pathlib import Path

import torch

from realuid.components import register
from realuid.context import RunContext
from realuid.errors import UserError
from realuid.io import sha256_file
from realuid.metrics.base import Metric
from realuid.metrics.classifier import CIFARClassifier, load_classifier
from realuid.metrics.frechet import (frechet_distance, gaussian_statistics, precision_recall, read_statistics,
                                     write_statistics)
from realuid.pictures import images_to_unit, quantize


@torch.no_grad()
def extract_features(images: torch.Tensor, classifier: CIFARClassifier, batch_size: int = 500,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Penultimate features [N, D] (float64, CPU) of images (uint8 NCHW / NHWC, or float in [-1, 1] NCHW)."""
    classifier.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        x = images_to_unit(images[start:start + batch_size].to(device))
        chunks.append(classifier.features(x).double().cpu())
    return torch.cat(chunks)


def feature_statistics(images_uint8: torch.Tensor, classifier: CIFARClassifier, batch_size: int = 500,
                       device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) of the classifier's penultimate features over ``images_uint8``."""
    return gaussian_statistics(extract_features(images_uint8, classifier, batch_size, device))


@register("metric")
class ClassifierFD(Metric):
    """Fréchet distance in a CIFAR-10 classifier's penultimate features, with k-NN precision/recall.

    ``FD = |mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g^1/2 S_r S_g^1/2)^1/2)`` between
    Gaussians fitted to the features of the generated samples (quantised to
    uint8, as if saved) and of the reference split of the CIFAR-10 shards;
    precision/recall after Kynkäänniemi et al. (2019) against up to
    ``pr_reference_size`` reference features. The reference statistics are
    computed once and cached (written atomically), keyed by the classifier's
    sha256. Returns ``{"fd_classifier", "precision_classifier", "recall_classifier"}``.

    The offline stand-in for FID: the features are a small CIFAR-10
    classifier's, not Inception-v3's, so nothing is downloaded and the values
    are not comparable with published FIDs.

    Usage::

        metric = ClassifierFD("registry/checkpoints/fd_classifier.pt", num_samples=10000)
        metric(samples)          # samples float [N, 3, 32, 32] in [-1, 1], or uint8 [N, 32, 32, 3]

    Args:
        classifier_path: checkpoint written by ``tools/train_fd_classifier.py``.
        reference_split: CIFAR-10 split of the reference statistics ("train" or "test").
        reference_cache: file (``.pt`` or ``.npz``) of the reference statistics; default
            beside the checkpoint, ``<checkpoint>.<split>-reference.pt``.
        num_samples: how many samples the caller should generate for one evaluation.
        root: CIFAR-10 shard folder (default as :class:`CIFAR10Shards`).
        reference_limit: use only the first images of the split (smoke tests).
        batch_size: images per classifier forward pass.
        device: where features are computed (default: cuda when available).
        precision_recall: also return k-NN precision and recall.
        pr_k: the k of the k-NN radii.
        pr_reference_size: reference features kept for precision/recall.
    """

    def __init__(self, classifier_path: str = "registry/checkpoints/fd_classifier.pt",
                 reference_split: str = "train", reference_cache: str | None = None, num_samples: int = 10000,
                 root: str | None = None, reference_limit: int | None = None, batch_size: int = 500,
                 device: str | None = None, precision_recall: bool = True, pr_k: int = 3,
                 pr_reference_size: int = 10000):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.classifier_path = Path(classifier_path)
        self.classifier = load_classifier(self.classifier_path, self.device)
        self.classifier_sha256 = sha256_file(self.classifier_path)
        self.reference_split, self.reference_limit, self.root = reference_split, reference_limit, root
        suffix = f".{reference_split}{'' if reference_limit is None else f'-{reference_limit}'}-reference.pt"
        self.reference_cache = Path(reference_cache) if reference_cache else self.classifier_path.with_suffix(suffix)
        self.num_samples, self.batch_size = num_samples, batch_size
        self.with_precision_recall, self.pr_k, self.pr_reference_size = precision_recall, pr_k, pr_reference_size
        self._reference: dict | None = None

    def attach(self, context: RunContext) -> "ClassifierFD":
        """Check that the run's data are CIFAR-shaped images; read the shards from the same folder as the data."""
        data = context.data
        if tuple(data.shape) != (3, 32, 32):
            raise UserError(f"ClassifierFD measures 32x32 RGB images; the run's data have shape {tuple(data.shape)}",
                            "ClassifierFD", "use it with CIFAR-10 data (CIFAR10Shards), or drop it from the metrics")
        if self.root is None and getattr(data, "root", None) is not None:
            self.root = data.root
        return self

    def reference(self) -> dict:
        """Reference statistics: read from the cache when it matches this classifier and split, else computed."""
        if self._reference is None:
            cached = read_statistics(self.reference_cache)
            if (cached is not None and cached.get("classifier_sha256") == self.classifier_sha256
                    and cached.get("split") == self.reference_split):
                self._reference = cached
            else:
                self._reference = self._compute_reference()
                write_statistics(self.reference_cache, self._reference)
        return self._reference

    def _compute_reference(self) -> dict:
        from realuid.data.cifar import read_cifar10

        images, _ = read_cifar10(self.root, self.reference_split, self.reference_limit)
        features = extract_features(images, self.classifier, self.batch_size, self.device)
        mu, sigma = gaussian_statistics(features)
        keep = torch.randperm(len(features), generator=torch.Generator().manual_seed(0))[:self.pr_reference_size]
        return {"mu": mu, "sigma": sigma, "pr_features": features[keep].float(), "split": self.reference_split,
                "num_images": len(images), "classifier_sha256": self.classifier_sha256}

    def __call__(self, samples: torch.Tensor) -> dict[str, float]:
        images = quantize(samples)
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, 32, 32):
            raise UserError(f"ClassifierFD needs 32x32 RGB samples, got shape {tuple(samples.shape)}",
                            "ClassifierFD", "use it on CIFAR-10-shaped data: float [N, 3, 32, 32] in [-1, 1] "
                            "or uint8 [N, 32, 32, 3]")
        if len(images) < 2:
            raise UserError(f"a Fréchet distance needs at least 2 samples, got {len(images)}",
                            "ClassifierFD.num_samples", "evaluate on more samples (10,000 or more for stable values)")
        reference = self.reference()
        features = extract_features(images, self.classifier, self.batch_size, self.device)
        mu, sigma = gaussian_statistics(features)
        result = {"fd_classifier": frechet_distance(mu, sigma, reference["mu"], reference["sigma"])}
        if self.with_precision_recall:
            precision, recall = precision_recall(reference["pr_features"].to(self.device),
                                                 features.float().to(self.device), self.pr_k)
            result.update(precision_classifier=precision, recall_classifier=recall)
        return result
