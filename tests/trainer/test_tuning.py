"""The learning-rate finder's suggestion policy (trainer.tuning), on curves and on a real sweep."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from trainer_testkit import write_image_folder

from trainer.train import train
from trainer.tuning import BETA, LR_FIND_CSV, suggest_learning_rate, unbias_losses

LRS = list(np.geomspace(1e-8, 1.0, 100))


def lightning_smoothing(raw: list[float], start_step: int = 0) -> list[float]:
    """The smoothed losses Lightning's finder records (``_LRCallback``), bias correction as it does it."""
    avg, out = 0.0, []
    for k, loss in enumerate(raw):
        avg = BETA * avg + (1 - BETA) * loss
        out.append(avg / (1 - BETA ** (start_step + k + 2)))
    return out


def test_unbias_losses_undoes_lightnings_off_by_one():
    # Lightning's own recording callback, fed a constant loss after the optimiser steps of a
    # trainer that had taken 5 steps before the finder.
    import torch
    from pytorch_lightning.tuner.lr_finder import _LRCallback

    callback = _LRCallback(num_training=30, early_stop_threshold=None)
    trainer = SimpleNamespace(
        fit_loop=SimpleNamespace(batch_idx=0), accumulate_grad_batches=1, global_step=0, should_stop=False,
        strategy=SimpleNamespace(broadcast=lambda value: value),
    )
    for k in range(30):
        trainer.fit_loop.batch_idx, trainer.global_step = k, 5 + k + 1
        callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.7)}, None, k)
    assert callback.losses[0] < 0.15  # as recorded: the curve starts far too low
    assert unbias_losses(callback.losses, start_step=5) == pytest.approx([0.7] * 30)


def test_steepest_fall_before_the_minimum_not_the_flat_start():
    log_lr = np.log10(LRS)
    # Flat with noise up to 1e-4, falls steepest at 1e-3, lowest near 1e-2, then diverges.
    rng = np.random.default_rng(0)
    raw = 0.7 - 0.4 / (1 + np.exp(-(log_lr + 3) * 3)) + np.where(log_lr > -2, (log_lr + 2) * 3, 0) + rng.normal(0, 0.02, 100)
    losses = unbias_losses(lightning_smoothing(list(raw)))
    suggestion = suggest_learning_rate(LRS, losses, min_lr=1e-8, max_lr=1.0)
    lowest = LRS[int(np.nanargmin(losses[10:])) + 10]
    assert suggestion.lr is not None and 1e-4 < suggestion.lr < lowest
    assert "falls fastest" in suggestion.reason


def test_flat_curve_that_diverges_gives_a_tenth_of_the_edge():
    rng = np.random.default_rng(1)
    raw = [0.7 + rng.normal(0, 0.03) if lr < 0.05 else 1.5 for lr in LRS]
    suggestion = suggest_learning_rate(LRS, unbias_losses(lightning_smoothing(raw)))
    assert suggestion.lr is not None and 1e-3 <= suggestion.lr <= 5e-3  # edge near 0.02-0.05, then / 10
    assert "diverged" in suggestion.reason


def test_flat_curve_gives_no_suggestion():
    rng = np.random.default_rng(2)
    raw = [0.7 + rng.normal(0, 0.03) for _ in LRS]
    suggestion = suggest_learning_rate(LRS, unbias_losses(lightning_smoothing(raw)))
    assert suggestion.lr is None and "neither fell clearly nor diverged" in suggestion.reason


def test_suggestion_stays_in_the_configured_range():
    raw = [1.0 - 0.5 * i / 99 for i in range(100)]  # falls steadily up to max_lr
    losses = unbias_losses(lightning_smoothing(raw))
    assert suggest_learning_rate(LRS, losses, max_lr=1e-3).lr == 1e-3
    assert suggest_learning_rate(LRS[:12], losses[:12]).lr is None  # 2 steps after the skipped 10


def test_finder_takes_every_step_when_an_epoch_is_shorter(make_cfg, tmp_path):
    # Two batches an epoch and one epoch: before, Lightning's finder stopped after 2 steps.
    dataset = write_image_folder(tmp_path / "shapes", per_class=6)
    cfg = make_cfg("tune_lr=true", "lr_find.num_training=25", "data.image_size=16", "data.batch_size=4", data_root=dataset)
    summary = train(cfg)
    curve = (Path(cfg.paths.output_dir) / LR_FIND_CSV).read_text().splitlines()
    assert curve[0] == "lr,loss" and 24 <= len(curve) - 1 <= 25  # Lightning records all but the last step or all
    assert summary["epochs"] == 1  # max_epochs restored for the real fit


def test_a_found_rate_leaves_the_random_stream_of_the_run_without_tune_lr():
    import pytorch_lightning as pl
    import torch

    from trainer.tuning import _reseed

    pl.seed_everything(7, verbose=False)
    first = torch.rand(3)
    torch.rand(100)  # what the finder's batches and augmentations draw
    _reseed()
    assert torch.equal(torch.rand(3), first)
