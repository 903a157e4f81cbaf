"""Lightning callbacks of our own: progress, checkpoint names, channels-last layout and throughput.

Epochs are counted from 1 in everything a person reads (the bar, the per-epoch lines, checkpoint
file names, the run summary); Lightning counts ``trainer.current_epoch`` from 0 internally.
Freezing and unfreezing (fine-tuning strategies) is in ``trainer.finetuning``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.callbacks import ModelCheckpoint as LightningModelCheckpoint

logger = logging.getLogger(__name__)


class _LogFilesOnly(logging.Handler):
    """Hand records to the root logger's handlers that do not write to the console: the run's
    log file under Hydra (its ``file`` handler), pytest's capture; not Hydra's ``console``."""

    def emit(self, record: logging.LogRecord) -> None:
        consoles = {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__}
        own = logging.getLogger(record.name).handlers  # e.g. pytest's, attached to every logger
        for handler in logging.getLogger().handlers:
            if handler not in own and getattr(handler, "stream", None) not in consoles and record.levelno >= handler.level:
                handler.handle(record)


#: The logger of the lines :func:`echo` prints: they go to the log file, not a second time to
#: the console (whatever logging configuration Hydra was given).
progress_logger = logging.getLogger("trainer.progress")
progress_logger.addHandler(_LogFilesOnly())
progress_logger.propagate = False


def echo(line: str) -> None:
    """Print ``line`` on stdout (plain, for people and ``grep``) and log it to the run's log file.

    ``print`` rather than a stdout logging handler: at a terminal Rich's live progress bar
    redirects ``sys.stdout`` so printed lines appear above the bar instead of tearing it.
    """
    print(line, flush=True)  # noqa: T201
    progress_logger.info("%s", line)


class ProgressBar(RichProgressBar):
    """Rich's progress bar at a terminal (or in Jupyter), epochs counted from 1; nothing elsewhere.

    Rich animates only a terminal: in a pipe, a file or a SLURM log it would print each bar once,
    when it stops, as a wrapped block of metrics. There :class:`EpochProgress`'s one line per
    epoch is the progress. Arguments are ``RichProgressBar``'s.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from rich.console import Console

        console = Console(**self._console_kwargs)
        if not (console.is_terminal or console.is_jupyter):
            self.disable()
        super().setup(trainer, pl_module, stage)

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            description += f"/{self.trainer.max_epochs}"
        # As Lightning's: pad to the validation bar's label so the bars do not flicker.
        return f"{description:{len(self.validation_description)}}"


class EpochProgress(pl.Callback):
    """One plain line per epoch, on stdout and in the run's log file (rank 0 only)::

        resnet18 epoch 3/20: train loss 0.4123, val loss 0.5012, val acc 0.8510, 12.3 s

    Losses are the epoch means of the cross-entropy (nats), ``val acc`` the share of validation
    images classified right; seconds are wall time of the whole epoch, validation included. The
    val figures are left out of epochs without a validation pass (``check_val_every_n_epoch``).

    Args:
        name: what the lines are headed with, the model's name (``${model.net.name}``).
    """

    def __init__(self, name: str = "model") -> None:
        self.name = name
        self._start = 0.0
        self._validated = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        self._validated = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            echo(self.line(trainer, time.perf_counter() - self._start))

    def line(self, trainer: pl.Trainer, seconds: float) -> str:
        """The line for the epoch ``trainer`` has just trained, ``seconds`` long."""
        metrics = trainer.callback_metrics
        epoch = f"{trainer.current_epoch + 1}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            epoch += f"/{trainer.max_epochs}"
        parts = [_figure("train loss", metrics.get("train/loss_epoch"))]
        if self._validated:
            parts += [_figure("val loss", metrics.get("val/loss")), _figure("val acc", metrics.get("val/acc"))]
        parts.append(f"{seconds:.1f} s")
        return f"{self.name} epoch {epoch}: " + ", ".join(parts)


def _figure(name: str, value: Any) -> str:
    return f"{name} {float(value):.4f}" if value is not None else f"{name} -"


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with epochs counted from 1 in file names.

    ``filename="epoch_{epoch:03d}"`` names the 17th epoch's checkpoint ``epoch_017.ckpt``, the
    number the progress lines and the run summary give it. Only the name changes: the
    checkpoint's own ``epoch`` field stays Lightning's (0-based), which ``resume`` relies on.
    """

    def format_checkpoint_name(
        self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None, prefix: str | None = None
    ) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename=filename, ver=ver, prefix=prefix)


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
