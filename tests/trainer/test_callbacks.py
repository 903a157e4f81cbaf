"""Our Lightning callbacks on a real (tiny) Trainer: epochs counted from 1 in the bar, the
per-epoch lines and checkpoint names; the Rich bar only where it can animate."""

from __future__ import annotations

import io
import logging
import re

import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel

from trainer.callbacks import EpochProgress, ModelCheckpoint, ProgressBar


class LoggingModel(BoringModel):
    """BoringModel logging what the per-epoch line reads (the classifier's keys)."""

    def training_step(self, batch, batch_idx):
        output = super().training_step(batch, batch_idx)
        self.log("train/loss", output["loss"], on_step=True, on_epoch=True)
        return output

    def validation_step(self, batch, batch_idx):
        loss = self.step(batch)
        self.log("val/loss", loss)
        self.log("val/acc", 0.25 * (self.current_epoch + 1))
        return loss


def fit(tmp_path, *callbacks: pl.Callback, epochs: int = 3) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=epochs, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=1,
        logger=False, enable_model_summary=False, default_root_dir=tmp_path, callbacks=list(callbacks),
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks), accelerator="cpu",
    )
    trainer.fit(LoggingModel())
    return trainer


def test_epoch_lines_and_checkpoint_names_count_from_one(tmp_path, capsys, caplog):
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "checkpoints", filename="epoch_{epoch:03d}", monitor="val/acc", mode="max", save_top_k=-1,
        auto_insert_metric_name=False,
    )
    with caplog.at_level(logging.INFO, logger="trainer.progress"):
        trainer = fit(tmp_path, EpochProgress("boring"), checkpoint)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("boring epoch")]
    assert len(lines) == 3
    for epoch, line in enumerate(lines, start=1):
        assert re.fullmatch(
            rf"boring epoch {epoch}/3: train loss \d+\.\d{{4}}, val loss \d+\.\d{{4}}, val acc {0.25 * epoch:.4f}, \d+\.\d s",
            line,
        ), line
    assert [r.getMessage() for r in caplog.records if r.name == "trainer.progress"] == lines  # the log file's copy
    names = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    assert names == ["epoch_001.ckpt", "epoch_002.ckpt", "epoch_003.ckpt"]
    assert checkpoint.best_model_path.endswith("epoch_003.ckpt")
    assert torch.load(checkpoint.best_model_path, weights_only=True)["epoch"] == 2  # Lightning's own count
    assert trainer.current_epoch == 3


def test_epochs_without_validation_leave_val_figures_out(tmp_path, capsys):
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=1, limit_val_batches=1, check_val_every_n_epoch=2, logger=False,
        enable_model_summary=False, enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path,
        callbacks=[EpochProgress("boring")], num_sanity_val_steps=0,
    )
    trainer.fit(LoggingModel())
    first, second = [line for line in capsys.readouterr().out.splitlines() if line.startswith("boring epoch")]
    assert "val" not in first and "val acc 0.5000" in second


def test_progress_bar_counts_from_one_at_a_terminal(tmp_path):
    screen = io.StringIO()
    fit(tmp_path, ProgressBar(console_kwargs={"force_terminal": True, "file": screen, "width": 120}), epochs=2)
    shown = screen.getvalue()
    assert "Epoch 2/2" in shown and "Epoch 0/" not in shown and "Epoch 1/1" not in shown


def test_progress_bar_stays_off_in_a_pipe(tmp_path):
    screen = io.StringIO()  # not a terminal: Rich would print the finished bar once, as a block
    bar = ProgressBar(console_kwargs={"file": screen})
    fit(tmp_path, bar, epochs=1)
    assert bar.is_disabled and screen.getvalue() == ""
