"""Slow end-to-end runs: real photos and DDP on CPU, each as the user types it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_trainer(*overrides: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "trainer", *overrides], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_real_photos_with_their_own_train_val_split(tmp_path, hymenoptera):
    run_trainer(
        "experiment=baseline_cnn", f"data.root={hymenoptera}", "data.image_size=64", "data.num_workers=1",
        "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'run'}",
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["classes"] == ["ants", "bees"]
    assert summary["split_sizes"]["val"] == len(list((hymenoptera / "val").rglob("*.jpg")))
    assert summary["val_acc"] > 0.4  # two classes; two epochs from scratch only beat chance a little


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes(tmp_path, catalog_dataset):
    run_trainer(
        "trainer=ddp_cpu", f"data.root={catalog_dataset}", "data.image_size=32", "data.batch_size=4",
        "data.num_workers=0", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'run'}",
    )
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and Path(summary["best_checkpoint"]).is_file()
    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    assert [r for r in rows if r["val/acc"]], "rank 0 logged the (synced) validation metrics"
    assert (run / "train_ddp_process_1.log").is_file()  # the second rank ran
