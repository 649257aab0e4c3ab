"""Training of the FD classifier (used by ``tools/train_fd_classifier.py``): augmentation, SGD loop, accuracy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from realuid.metrics.classifier import CIFARClassifier
from realuid.pictures import images_to_unit


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random ``H x W`` crops of the reflect-padded batch, one offset per image (standard CIFAR augmentation)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode="reflect")
    top = torch.randint(2 * padding + 1, (b,), generator=generator).to(x.device)
    left = torch.randint(2 * padding + 1, (b,), generator=generator).to(x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    return padded[torch.arange(b, device=x.device)[:, None, None, None],
                  torch.arange(c, device=x.device)[None, :, None, None], rows, cols]


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (padding 4) and horizontal flip with probability 1/2."""
    x = random_crop(x, 4, generator)
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@torch.no_grad()
def accuracy(classifier: CIFARClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500,
             device: torch.device | str = "cpu") -> float:
    """Fraction of ``images`` (uint8) whose predicted class is ``labels``."""
    classifier.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        x = images_to_unit(images[start:start + batch_size].to(device))
        correct += (classifier(x).argmax(1).cpu() == labels[start:start + batch_size]).sum().item()
    return correct / max(len(images), 1)


def train_classifier(classifier: CIFARClassifier, images: torch.Tensor, labels: torch.Tensor, epochs: int,
                     batch_size: int = 256, lr: float = 0.1, weight_decay: float = 5e-4, seed: int = 0,
                     device: torch.device | str = "cpu", max_steps: int | None = None) -> list[float]:
    """SGD (Nesterov momentum 0.9) with a linear warm-up then cosine decay, label smoothing 0.1, crop+flip.

    ``images`` are uint8 [N, 3, 32, 32]; returns the loss of every step.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from realuid.data.cifar import progress_bar

    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    classifier.to(device).train()
    channels_last = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    classifier.to(memory_format=channels_last)
    images, labels = images.to(device), labels.to(device)
    steps_per_epoch = max(len(images) // batch_size, 1)
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    warmup = max(total // 20, 1)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / total))))
    losses = []
    columns = (TextColumn("training FD classifier"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[loss]}"), TimeRemainingColumn())
    with progress_bar(*columns) as progress:
        task = progress.add_task("train", total=total, loss="")
        while len(losses) < total:
            order = torch.randperm(len(images), generator=generator).to(device)
            for start in range(0, steps_per_epoch * batch_size, batch_size):
                if len(losses) == total:
                    break
                index = order[start:start + batch_size]
                x = augment(images_to_unit(images[index]), generator).contiguous(memory_format=channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = F.cross_entropy(classifier(x), labels[index], label_smoothing=0.1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                progress.update(task, advance=1, loss=f"loss {losses[-1]:.3f}")
    classifier.to(memory_format=torch.contiguous_format).eval()
    return losses
