"""A finished run folder, read back: its summary, its best checkpoint and the network in it.

What the after-training tools (``trainer.diagnostics``, ``trainer.export``) start from. A run folder
holds ``summary.json`` (written by ``trainer.train``) and ``checkpoints/``; the checkpoint is
read with ``torch.load(weights_only=True)``, so no pickled object is ever executed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.models import build_model
from trainer.summary import SUMMARY_FILE, RunSummary

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """One run folder, loaded.

    Attributes:
        run_dir: the run folder.
        summary: its ``summary.json``.
        checkpoint_path: the best checkpoint (``last.ckpt`` when no best one was recorded).
        model_name: backbone name (a key of ``trainer.models.MODELS``).
        classes: class names, index ``i`` is logit ``i``.
        image_size: side of the square network input, pixels.
        data_hparams: the datamodule's constructor arguments saved in the checkpoint
            (``root``, ``image_size``, ``val_fraction``, ``seed``, ...).
        net: the network with the checkpoint's weights, in eval mode, on CPU.
    """

    run_dir: Path
    summary: RunSummary
    checkpoint_path: Path
    model_name: str
    classes: list[str]
    image_size: int
    data_hparams: dict[str, Any]
    net: nn.Module


def find_checkpoint(run_dir: Path, summary: RunSummary) -> Path:
    """The run's best checkpoint; found beside the run when the folder has been moved.

    Raises:
        FileNotFoundError: no checkpoint (a ``fast_dev_run`` writes none).
    """
    best = summary.best_checkpoint
    candidates = []
    if best:
        candidates += [Path(best), run_dir / "checkpoints" / Path(best).name]
    candidates.append(run_dir / "checkpoints" / "last.ckpt")
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"no checkpoint in {run_dir} (looked for {', '.join(map(str, candidates))})")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, loaded with ``weights_only=True`` onto the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def net_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights of a LightningModule checkpoint (``net.`` prefix removed)."""
    prefix = "net."
    return {key[len(prefix):]: value for key, value in checkpoint["state_dict"].items() if key.startswith(prefix)}


def load_run(run_dir: str | Path) -> Run:
    """Read run folder ``run_dir`` and rebuild its network from the best checkpoint.

    Raises:
        FileNotFoundError: no ``summary.json`` or no checkpoint in ``run_dir``.
        ValueError: ``summary.json`` is not a run summary.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no {SUMMARY_FILE} (written by `python -m trainer`)")
    summary = RunSummary.read(summary_path)
    checkpoint_path = find_checkpoint(run_dir, summary)
    checkpoint = load_checkpoint(checkpoint_path)
    hparams = checkpoint.get("hyper_parameters", {})
    classes = [str(name) for name in (hparams.get("class_names") or summary.classes)]
    data_hparams = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    image_size = int(data_hparams.get("image_size") or summary.image_size)
    net = build_model(summary.model, num_classes=len(classes))
    net.load_state_dict(net_state_dict(checkpoint))
    net.eval()
    logger.info("loaded %s (%d classes) from %s", summary.model, len(classes), checkpoint_path)
    return Run(run_dir, summary, checkpoint_path, summary.model, classes, image_size, data_hparams, net)
