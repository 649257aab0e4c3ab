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


def inception_weights_path(path: str | None) -> Path:
    """The weights file to use (``path``, else ``$REALUID_INCEPTION_WEIGHTS``); a UserError if there is none."""
    path = path or os.environ.get(WEIGHTS_ENV)
    fix = (f"download {INCEPTION_WEIGHTS_URL} on a machine with internet access, copy the file "
           f"{INCEPTION_WEIGHTS_NAME} here, and pass it with --inception-weights PATH "
           f"(or bind TorchFidelityFID.inception_weights = 'PATH', or set {WEIGHTS_ENV}=PATH); "
           "without network access use the ClassifierFD metric instead")
    if not path:
        raise UserError("FID/IS need the Inception-v3 weights file and none was given "
                        "(realuid never downloads it: a download without network access hangs)",
                        "TorchFidelityFID.inception_weights", fix)
    if not Path(path).is_file():
        raise UserError(f"the Inception weights file {path} does not exist", "TorchFidelityFID.inception_weights",
                        fix)
    return Path(path)


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
    """

    def __init__(self, inception_weights: str | None = None, reference_split: str = "train",
                 num_samples: int = 50000, root: str | None = None, reference_limit: int | None = None,
                 batch_size: int = 200, inception_score: bool = True, cache_root: str | None = None):
        self.weights = inception_weights_path(inception_weights)   # fail at construction, not after sampling
        self.reference_split, self.root, self.reference_limit = reference_split, root, reference_limit
        self.num_samples, self.batch_size = num_samples, batch_size
        self.inception_score, self.cache_root = inception_score, cache_root
        self._reference: UInt8Images | None = None
        self._reference_name = ""

    def attach(self, context: RunContext) -> "TorchFidelityFID":
        """Check that the run's data are CIFAR-shaped images; read the shards from the same folder as the data."""
        data = context.data
        if tuple(data.shape) != (3, 32, 32):
            raise UserError(f"TorchFidelityFID compares with CIFAR-10 (32x32 RGB); the run's data have shape "
                            f"{tuple(data.shape)}", "TorchFidelityFID",
                            "use it with CIFAR-10 data (CIFAR10Shards), or drop it from the metrics")
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
