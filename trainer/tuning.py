"""Lightning's learning-rate finder (Smith 2017, "Cyclical learning rates", section 3.3), behind
``tune_lr=true``."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.tuner import Tuner

logger = logging.getLogger(__name__)

#: The plot of loss against learning rate, in the run folder.
LR_FIND_PLOT = "lr_find.png"


def find_learning_rate(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    output_dir: str | Path,
    min_lr: float = 1e-8,
    max_lr: float = 1.0,
    num_training: int = 100,
) -> float | None:
    """Sweep the learning rate over ``num_training`` batches and return the suggested one.

    Runs ``Tuner(trainer).lr_find`` (an exponential sweep from ``min_lr`` to ``max_lr``; the
    model's weights are restored afterwards) and takes Lightning's suggestion, the steepest
    descent of the loss, which needs a dozen batches or more. The
    plot is saved as ``<output_dir>/lr_find.png`` when matplotlib is installed. The caller sets
    the rate; the module is not touched (``update_attr=False``).

    Returns:
        The suggested learning rate, or ``None`` when the sweep gave none (too few batches, or
        the loss diverged at once); the configured rate then stands.

    Raises:
        ValueError: a distributed strategy (Lightning's tuner runs on one process).
    """
    if trainer.world_size > 1:
        raise ValueError("tune_lr=true needs a single-process trainer (e.g. trainer=cpu or gpu), not DDP")
    lr_finder = Tuner(trainer).lr_find(
        model, datamodule=datamodule, min_lr=min_lr, max_lr=max_lr, num_training=num_training, update_attr=False
    )
    suggestion = lr_finder.suggestion() if lr_finder is not None else None
    if lr_finder is not None and importlib.util.find_spec("matplotlib") is not None and trainer.is_global_zero:
        import matplotlib

        matplotlib.use("Agg")  # files only; no display on a training node
        figure = lr_finder.plot(suggest=suggestion is not None)
        path = Path(output_dir) / LR_FIND_PLOT
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
        import matplotlib.pyplot as plt

        plt.close(figure)
        logger.info("learning-rate finder plot saved to %s", path)
    if suggestion is None:
        logger.warning("learning-rate finder gave no suggestion; keeping the configured rate")
    else:
        logger.info("learning-rate finder suggests lr=%.3g", suggestion)
    return suggestion
