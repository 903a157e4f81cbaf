"""The learning-rate range test behind ``tune_lr=true``: Lightning's finder, our suggestion policy.

Lightning's ``Tuner.lr_find`` runs the range test (Smith 2015/2017, "Cyclical learning rates for
training neural networks", section 3.3): ``num_training`` batches at rates growing exponentially
from ``min_lr`` to ``max_lr``, recording the loss smoothed by an exponential moving average
(beta 0.98, bias-corrected), and stopping early once it exceeds 4x its best value. The weights
are restored afterwards.

Which rate to take from that curve is ours (:func:`suggest_learning_rate`). Lightning's own
``suggestion()`` takes the steepest gradient of the loss with respect to the *linear* rate, which
favours the flat start of the curve, where rates are tiny and close together (it chose
``lr=1.45e-06`` on hymenoptera, and training never moved). Here the slope is taken per decade
of rate, as fast.ai's ``steep`` suggestion does, and only between the end of the first
``skip_begin`` steps and the minimum of the smoothed loss: past the minimum the loss is
diverging, before ``skip_begin`` the moving average stands on a handful of batches. A curve that
never falls clearly but diverges gives fast.ai's ``minimum`` rule (a tenth of the rate at the
minimum, read where the flat stretch ends); one that does neither gives nothing, and the configured rate stands.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.tuner import Tuner

logger = logging.getLogger(__name__)

#: The plot of loss against learning rate, and the curve as CSV (``lr,loss``), in the run folder.
LR_FIND_PLOT = "lr_find.png"
LR_FIND_CSV = "lr_find.csv"
#: Smoothing factor of the finder's moving average of the loss (Lightning's ``_LRCallback.beta``).
BETA = 0.98
#: Finder steps ignored at the start: the moving average still stands on a few batches.
SKIP_BEGIN = 10
#: Smallest relative fall of the smoothed loss, from its start to its minimum, that counts as a
#: descent to read a slope from. The moving average's own noise is ~0.5 % (beta 0.98 keeps
#: about a tenth of the per-batch spread); a few per cent is what a small network learns in 100
#: finder steps on a hard task, and that is no slope to trust.
MIN_RELATIVE_DROP = 0.05
#: Rise of the smoothed loss after its minimum that counts as divergence, relative to the minimum.
MIN_RELATIVE_RISE = 0.02


@dataclass(frozen=True)
class Suggestion:
    """What :func:`suggest_learning_rate` made of a range test.

    Attributes:
        lr: the suggested rate, or ``None`` when the curve gives none.
        reason: one sentence on why this rate (or why none), for the log.
        index: position in the finder's results of the point the rate was read at, or ``None``.
    """

    lr: float | None
    reason: str
    index: int | None = None


def suggest_learning_rate(
    lrs: list[float],
    losses: list[float],
    *,
    min_lr: float = 0.0,
    max_lr: float = math.inf,
    skip_begin: int = SKIP_BEGIN,
) -> Suggestion:
    """Read the rate to train with off a range test's smoothed loss curve.

    In order (fast.ai's ``lr_find`` suggestions, Howard & Gugger 2020, "Deep learning for
    coders", chapter 5, on Smith's range test):

    1. The loss falls clearly (by :data:`MIN_RELATIVE_DROP` of its value or more) between step
       ``skip_begin`` and its minimum: the rate where it falls fastest per decade of rate,
       the steepest negative slope of loss against ``log10(lr)`` over that stretch (fast.ai's
       ``steep``), so never on the flat start nor past the minimum.
    2. It stays flat, then rises above its minimum by :data:`MIN_RELATIVE_RISE` or more: a
       tenth of the last rate before that rise (fast.ai's ``minimum``, an order of magnitude
       below where training starts to diverge; read at the end of the flat stretch rather than
       at the minimum itself, which on a flat curve falls wherever the noise puts it).
    3. Otherwise none (the caller keeps the configured rate).

    Args:
        lrs: the finder's rates, increasing (``lr_finder.results["lr"]``).
        losses: the smoothed loss after each step (unbiased: :func:`unbias_losses`); NaN and
            infinite values are ignored.
        min_lr, max_lr: the configured range; the suggestion never leaves it.
        skip_begin: steps ignored at the start.

    Returns:
        A :class:`Suggestion` with the rate clipped to ``[min_lr, max_lr]`` and the reason, or
        ``lr=None`` and the reason.
    """
    lr_arr, loss_arr = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    finite = np.flatnonzero(np.isfinite(loss_arr) & np.isfinite(lr_arr) & (lr_arr > 0))
    finite = finite[finite >= skip_begin]
    if len(finite) < 3:
        return Suggestion(None, f"only {len(finite)} usable finder steps after the first {skip_begin}")
    lowest = int(finite[np.argmin(loss_arr[finite])])
    window = finite[finite <= lowest]
    start_loss, low_loss = loss_arr[window[0]], loss_arr[lowest]
    curve = (
        f"smoothed loss {start_loss:.4g} at lr={lr_arr[window[0]]:.3g}, lowest {low_loss:.4g} at "
        f"lr={lr_arr[lowest]:.3g}, {loss_arr[finite[-1]]:.4g} at lr={lr_arr[finite[-1]]:.3g}"
    )
    if len(window) >= 3 and start_loss - low_loss >= MIN_RELATIVE_DROP * abs(start_loss):
        slopes = np.gradient(loss_arr[window], np.log10(lr_arr[window]))
        best = int(window[np.argmin(slopes)])
        lr = float(np.clip(lr_arr[best], min_lr, max_lr))
        return Suggestion(
            lr, f"where the smoothed loss falls fastest, {float(slopes.min()):.3g} per decade of lr, before its minimum ({curve})", best
        )
    risen = finite[(finite > lowest) & (loss_arr >= low_loss + MIN_RELATIVE_RISE * abs(low_loss))[finite]]
    if len(risen):
        edge = int(finite[finite < risen[0]][-1])
        lr = float(np.clip(lr_arr[edge] / 10, min_lr, max_lr))
        return Suggestion(
            lr,
            f"a tenth of lr={lr_arr[edge]:.3g}, the last rate before the loss diverged; it did not fall clearly "
            f"before ({curve})",
            edge,
        )
    return Suggestion(None, f"the loss neither fell clearly nor diverged ({curve})")


def find_learning_rate(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    output_dir: str | Path,
    min_lr: float = 1e-8,
    max_lr: float = 1.0,
    num_training: int = 100,
) -> float | None:
    """Run the range test over ``num_training`` batches and return the rate to train with.

    The finder takes ``num_training`` steps whatever the dataset size: it cycles the training
    dataloader over as many epochs as needed (``trainer.max_epochs`` is lifted for the sweep and
    restored after). The rate is chosen by :func:`suggest_learning_rate`, and logged with the
    reason. When it returns a rate it re-seeds the global random generators with the run's seed
    (``pl.seed_everything``'s ``PL_GLOBAL_SEED``), so that a model rebuilt with the rate starts as
    the run without ``tune_lr`` would have. The plot is saved as ``<output_dir>/lr_find.png`` (the chosen rate marked) when
    matplotlib is installed. The caller sets the rate; the module is not touched.

    Returns:
        The rate in ``[min_lr, max_lr]``, or ``None`` when the curve gives none (the log line
        says why; the configured rate then stands).

    Raises:
        ValueError: a distributed strategy (Lightning's tuner runs on one process).
    """
    if trainer.world_size > 1:
        raise ValueError("tune_lr=true needs a single-process trainer (e.g. trainer=cpu or gpu), not DDP")
    fit_loop = trainer.fit_loop
    start_step = trainer.global_step
    max_epochs = fit_loop.max_epochs
    # Lightning's finder bounds the sweep by max_steps but keeps max_epochs: on a small dataset
    # (hymenoptera: 7 batches an epoch) a one-epoch run would stop it after 7 steps. An epoch has
    # at least one batch, so num_training epochs always suffice; a finite bound keeps
    # trainer.estimated_stepping_batches (the one-cycle schedule's length) finite.
    fit_loop.max_epochs = max(max_epochs or 0, num_training)
    try:
        lr_finder = Tuner(trainer).lr_find(
            model, datamodule=datamodule, min_lr=min_lr, max_lr=max_lr, num_training=num_training, update_attr=False
        )
    finally:
        fit_loop.max_epochs = max_epochs
    if lr_finder is None:
        logger.warning("learning-rate finder did not run; keeping the configured rate")
        return None
    lrs, losses = lr_finder.results["lr"], unbias_losses(lr_finder.results["loss"], start_step)
    lr_finder.results["loss"] = losses
    suggestion = suggest_learning_rate(lrs, losses, min_lr=min_lr, max_lr=max_lr)
    steps = len(losses)
    if suggestion.lr is not None:
        _reseed()
    if suggestion.lr is None:
        logger.warning(
            "learning-rate finder (%d steps): no suggestion, %s; keeping the configured rate", steps, suggestion.reason
        )
    else:
        logger.info("learning-rate finder (%d steps): lr=%.3g, %s", steps, suggestion.lr, suggestion.reason)
    if trainer.is_global_zero:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        rows = "".join(f"{lr:.6g},{loss:.6g}\n" for lr, loss in zip(lrs, losses))
        (output_dir / LR_FIND_CSV).write_text("lr,loss\n" + rows, encoding="utf-8")
        if importlib.util.find_spec("matplotlib") is not None:
            _save_plot(lr_finder, suggestion, output_dir / LR_FIND_PLOT)
    return suggestion.lr


def unbias_losses(losses: list[float], start_step: int = 0, beta: float = BETA) -> list[float]:
    """Redo the bias correction of Lightning's smoothed finder losses.

    Lightning divides the moving average after the ``k``-th finder step (0-based) by
    ``1 - beta**(global_step + 1)``, read after the optimiser step, i.e. with
    ``global_step = start_step + k + 1``: one step too many (and ``start_step`` too many when
    tuning a resumed trainer), which halves the first value and makes the curve's first few dozen
    points rise however the loss moves. The correct divisor is ``1 - beta**(k + 1)`` (Kingma & Ba
    2015, section 3).
    """
    return [
        loss * (1 - beta ** (start_step + k + 2)) / (1 - beta ** (k + 1)) for k, loss in enumerate(losses)
    ]


def _reseed() -> None:
    # The sweep drew batches and augmentations from the global generators. Re-seeded with the
    # run's seed, the model the caller rebuilds with the new rate starts from the weights, and
    # then sees the batches, of the same run without tune_lr: the rate is the only difference.
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is not None:
        pl.seed_everything(int(seed), workers=os.environ.get("PL_SEED_WORKERS") == "1", verbose=False)


def _save_plot(lr_finder, suggestion: Suggestion, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a training node
    import matplotlib.pyplot as plt

    figure = lr_finder.plot(suggest=False)
    if suggestion.index is not None:
        ax = figure.axes[0]
        ax.plot(suggestion.lr, lr_finder.results["loss"][suggestion.index], "o", color="red", label=f"lr={suggestion.lr:.3g}")
        ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    logger.info("learning-rate finder plot saved to %s", path)
