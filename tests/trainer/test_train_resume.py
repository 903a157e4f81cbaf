"""Kill-and-resume: a run stopped after 2 of 4 epochs carries on from its last.ckpt with one
override, with the epoch count, step count and optimizer state of the checkpoint."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

import torch
from trainer_probes import TrainingProbe

from trainer.errors import UserError
from trainer.train import resume_checkpoint, train

STOP = ("+callbacks.stop._target_=trainer_probes.StopAfterEpochs", "+callbacks.stop.epochs=2")
PROBE = "+callbacks.probe._target_=trainer_probes.TrainingProbe"


def test_resume_continues_epochs_and_optimizer_state(make_cfg, catalog_dataset, tmp_path):
    overrides = ("trainer.max_epochs=4", "callbacks.early_stopping.patience=100")
    killed = train(make_cfg(*overrides, *STOP, data_root=catalog_dataset))
    run = Path(killed.output_dir)
    assert killed.epochs == 2
    saved = tmp_path / "killed_last.ckpt"
    shutil.copy(run / "checkpoints" / "last.ckpt", saved)
    checkpoint = torch.load(saved, weights_only=False)

    resumed = train(make_cfg(*overrides, "resume=true", PROBE, data_root=catalog_dataset))

    start = next(r for r in TrainingProbe.records if r["event"] == "train_start")
    assert start["epoch"] == 2 and start["global_step"] == checkpoint["global_step"] == 4
    expected, restored = checkpoint["optimizer_states"][0], start["optimizer"]
    assert restored["state"].keys() == expected["state"].keys() and expected["state"]
    for index, state in expected["state"].items():
        assert int(restored["state"][index]["step"]) == int(state["step"]) == 4
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(restored["state"][index][key], state[key])
    assert restored["param_groups"][0]["lr"] == pytest.approx(expected["param_groups"][0]["lr"])
    assert [r["epoch"] for r in TrainingProbe.records if r["event"] == "epoch_end"] == [2, 3]
    assert resumed.epochs == 4 and resumed.output_dir == killed.output_dir
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 8 and int(last["optimizer_states"][0]["state"][0]["step"]) == 8
    with open(run / "csv" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    val_epochs = [int(row["epoch"]) for row in rows if row["val/acc"]]
    # The killed run's rows kept (its fit, then its closing evaluation), the resumed run's appended.
    assert val_epochs[:2] == [0, 1] and {0, 1, 2, 3} <= set(val_epochs)


def test_resume_from_another_run_folder_and_missing_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg("resume=true")
    with pytest.raises(UserError, match="last.ckpt"):
        resume_checkpoint(cfg)
    other = tmp_path / "old_run"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resume_checkpoint(make_cfg(f"resume={other}")) == str(other / "checkpoints" / "last.ckpt")
    assert resume_checkpoint(make_cfg("ckpt_path=/x.ckpt", "resume=true")) == "/x.ckpt"
    assert resume_checkpoint(make_cfg()) is None
