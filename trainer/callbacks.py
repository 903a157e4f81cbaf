"""Lightning callbacks of our own: progress, channels-last layout and training throughput.

Freezing and unfreezing (fine-tuning strategies) is in ``trainer.finetuning``.
"""

from __future__ import annotations

import logging
import sys
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.callbacks import RichProgressBar

logger = logging.getLogger(__name__)


class ProgressBar(RichProgressBar):
    """Rich's progress bar at a terminal; in a log (a pipe, a file, a SLURM job) one line per epoch.

    Rich animates only a terminal: elsewhere it prints each bar once, when it stops, so a log
    would show nothing until the end. There this bar also logs
    ``epoch 3/20: train/loss_epoch=0.412 val/acc=0.851 ...`` (the bar's metrics) after each epoch.
    Arguments are ``RichProgressBar``'s.
    """

    def _is_terminal(self) -> bool:
        console = getattr(self, "_console", None)
        return console.is_terminal if console is not None else sys.stdout.isatty()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._is_terminal() or not trainer.is_global_zero:
            return
        metrics = self.get_metrics(trainer, pl_module)
        shown = " ".join(
            f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
            for key, value in metrics.items()
            if key != "v_num"
        )
        logger.info("epoch %d/%d: %s", trainer.current_epoch + 1, trainer.max_epochs, shown)


class ChannelsLast(pl.Callback):
    """Run the network in channels-last memory layout (NHWC), the layout tensor cores want.

    PyTorch's tuning guide measures 8-35 % faster convolutions with channels-last under mixed
    precision on Volta or newer GPUs; on CPU it can be slower, hence ``"auto"``.

    The weights are converted once (``setup``) and every input of ``pl_module.net`` is made
    channels-last by a forward pre-hook; shapes stay ``(N, 3, H, W)``.

    Args:
        enabled: ``True``, ``False``, or ``"auto"``: on when training on a CUDA GPU.
    """

    def __init__(self, enabled: bool | str = "auto") -> None:
        if enabled not in (True, False, "auto"):
            raise ValueError(f"ChannelsLast enabled must be true, false or 'auto', not {enabled!r}")
        self.enabled = enabled
        self._hooked: set[int] = set()

    def active(self, trainer: pl.Trainer) -> bool:
        if self.enabled == "auto":
            return isinstance(trainer.accelerator, CUDAAccelerator)
        return bool(self.enabled)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.active(trainer) or id(pl_module) in self._hooked:
            return
        pl_module.net.to(memory_format=torch.channels_last)
        pl_module.net.register_forward_pre_hook(_to_channels_last)
        self._hooked.add(id(pl_module))


def _to_channels_last(module: torch.nn.Module, args: tuple) -> tuple:
    images, *rest = args
    return (images.contiguous(memory_format=torch.channels_last), *rest)


class Throughput(pl.Callback):
    """Measure training speed and log it per epoch.

    Logged: ``time/epoch_s`` (wall seconds of the whole epoch, validation included, as the seeds
    reported it) and ``train/images_per_sec`` (training images per wall second of the training
    batches, all ranks together, data loading included, validation excluded). Totals are kept
    for the run summary.
    """

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.train_seconds = 0.0
        self.train_images = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._last_batch_end = time.perf_counter()
        self._epoch_images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._last_batch_end = time.perf_counter()
        # Under DDP every rank trains on its own shard of the same size: count them all.
        self._epoch_images += len(batch[1]) * trainer.world_size

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        train_seconds = self._last_batch_end - self._epoch_start
        self.epoch_seconds.append(now - self._epoch_start)
        self.train_seconds += train_seconds
        self.train_images += self._epoch_images
        pl_module.log("time/epoch_s", now - self._epoch_start, on_epoch=True)
        if train_seconds > 0:
            pl_module.log("train/images_per_sec", self._epoch_images / train_seconds, on_epoch=True)

    @property
    def images_per_sec(self) -> float | None:
        """Training images per second over the whole run, or ``None`` before any epoch."""
        return self.train_images / self.train_seconds if self.train_seconds else None

    @property
    def seconds_per_epoch(self) -> float | None:
        """Mean wall seconds per epoch, or ``None`` before any epoch."""
        return sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else None
