"""``realuid import FORMAT CKPT --out DIR``: a foreign checkpoint as a realuid run folder (:mod:`realuid.models.importers`)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from realuid.cli.common import console, fail
from realuid.errors import UserError


def import_checkpoint(
    format: str = typer.Argument(..., metavar="FORMAT", help="Checkpoint format: torchcfm (torchcfm's "
                                 "UNetModel / UNetModelWrapper: the RealUID reference code's teachers and "
                                 "generators, torchcfm's CIFAR-10 example, a bare state dict)."),
    checkpoint: Path = typer.Argument(..., metavar="CKPT", help="The checkpoint file (.pt, loaded with weights_only=True, or "
                                      ".safetensors)."),
    out: Path = typer.Option(..., "--out", "-o", help="The run folder to create (must not exist)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="The recipe the folder records (default: "
                                          "gin/fm_cifar_teacher[_cond].gin for a teacher, gin/uid_fm_cifar[_cond]"
                                          ".gin for a generator); the architecture read from the weights is added."),
    key: Optional[str] = typer.Option(None, "--key", help="Where the state dict sits in the checkpoint, e.g. "
                                      "ema_models/0.999 (default per layout: ema_models/0.999, ema_gens/0.999, "
                                      "ema_model, or the only one)."),
    role: Optional[str] = typer.Option(None, "--role", help="teacher or generator (default: generator for the "
                                       "reference code's ema_gens/gen, else teacher)."),
    bind: list[str] = typer.Option([], "--bind", "-b", help="Extra gin binding for the recipe, e.g. what the "
                                   "weights do not show: 'UNet.head_channels = 64', 'UNet.img_resolution = 32'."),
    new_attention_order: bool = typer.Option(False, "--new-attention-order", help="The model was built with "
                                             "torchcfm's use_new_attention_order=True."),
):
    """Import a foreign checkpoint as a realuid run folder (teacher or one-step student)."""
    from rich.markup import escape

    from realuid.models.importers import FORMATS, import_torchcfm

    try:
        if format not in FORMATS:
            raise UserError(f"unknown checkpoint format {format!r}", "FORMAT argument",
                            f"use one of {', '.join(FORMATS)}; a diffusers UNet2DModel needs no import "
                            "(DiffusersUNet(path=...), gin/uid_vp_diffusers.gin); any other network: "
                            "docs/BRING_YOUR_OWN.md")
        command = ["realuid", "import", format, str(checkpoint), "--out", str(out)]
        for flag, value in (("--recipe", recipe), ("--key", key), ("--role", role)):
            command += [flag, str(value)] if value is not None else []
        command += [a for b in bind for a in ("--bind", b)] + (["--new-attention-order"] if new_attention_order else [])
        result = import_torchcfm(checkpoint, out, recipe, bind, key, role, new_attention_order, shlex.join(command))
    except UserError as err:
        fail(err)
    source = _quoted(f"CheckpointTeacher.source = '{result.out}'")
    arch = " ".join(f"--bind {_quoted(b)}" for b in result.differs)
    dropped = f", dropped {len(result.dropped)} GAN-head tensors" if result.dropped else ""
    cond = "_cond" if result.num_classes else ""
    console.print(f"[green]imported[/] {escape(result.role)} {escape(str(result.checkpoint))} "
                  f"({escape(result.key or 'the whole file')}, {result.parameters:,} parameters{dropped}) -> "
                  f"{escape(str(result.out))}", highlight=False, soft_wrap=True)
    if result.role == "teacher":
        console.print(f"distil it: realuid run gin/uid_fm_cifar{cond}.gin --bind {source} {arch}", markup=False,
                      highlight=False, soft_wrap=True)
    else:
        first = _quoted(f"FIRST_STAGE = '{result.out}'")
        console.print(f"sample it: realuid sample {result.out} --num 64 --out {result.out}/samples; fine-tune it: "
                      f"realuid run gin/realuid_ft_fm_cifar{cond}.gin --bind {first} --bind \"CheckpointTeacher.source = "
                      f"'TEACHER'\" {arch}", markup=False, highlight=False, soft_wrap=True)
    console.print("UNet.time_scale = 1.0 is required wherever these weights are used: torchcfm's network reads t "
                  "unscaled (realuid's default multiplies it by 1000), and a U-Net built without it loads the "
                  "weights but computes another function.", markup=False, highlight=False, soft_wrap=True)


def _quoted(binding: str) -> str:
    """A binding as a shell word: in double quotes when that is safe (bindings quote strings with '), else shlex's."""
    return f'"{binding}"' if not any(c in binding for c in '"$`\\!') else shlex.quote(binding)
