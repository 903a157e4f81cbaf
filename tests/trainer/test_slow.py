"""Slow end-to-end runs: real photos and DDP on CPU, each as the user types it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.summary import RunSummary

REPO = Path(__file__).resolve().parents[2]


def run_trainer(*overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "trainer", *overrides], cwd=REPO, capture_output=True, text=True, timeout=600,
        env=os.environ | (env or {}),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_real_photos_with_their_own_train_val_split(tmp_path, hymenoptera):
    run_trainer(
        "experiment=baseline_cnn", f"data.root={hymenoptera}", "data.image_size=64", "data.num_workers=1",
        "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'run'}",
    )
    summary = RunSummary.read(tmp_path / "run" / "summary.json")
    assert summary.classes == ["ants", "bees"]
    assert summary.split_sizes["val"] == len(list((hymenoptera / "val").rglob("*.jpg")))
    assert summary.val_acc > 0.4  # two classes; two epochs from scratch only beat chance a little


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes(tmp_path, catalog_dataset):
    probes = tmp_path / "probes"
    run_trainer(
        "trainer=ddp_cpu", f"data.root={catalog_dataset}", "data.image_size=32", "data.batch_size=4",
        "data.num_workers=0", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'run'}",
        "+callbacks.probe._target_=trainer_probes.ShardProbe", f"+callbacks.probe.dir={probes}",
        env={"PYTHONPATH": str(Path(__file__).parent)},
    )
    run = tmp_path / "run"
    summary = RunSummary.read(run / "summary.json")
    assert summary.epochs == 2 and Path(summary.best_checkpoint).is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    assert [r for r in rows if r["val/acc"]], "rank 0 logged the (synced) validation metrics"
    assert (run / "train_ddp_process_1.log").is_file()  # the second rank ran

    ranks = [json.loads((probes / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    # Each rank trains and validates on its own half (DistributedSampler), together on everything.
    train_size, val_size = summary.split_sizes["train"], summary.split_sizes["val"]
    for key, size in (("train_indices", train_size), ("val_indices", val_size)):
        first, second = (set(r[key]) for r in ranks)
        assert first | second == set(range(size))
        assert len(ranks[0][key]) == len(ranks[1][key]) == -(-size // 2)  # padded to equal halves
        assert len(first & second) <= size % 2  # only the padding repeats
    assert all(r["train_batches"] == len(r["train_indices"]) // 4 for r in ranks)  # drop_last
    # Synced: both ranks hold the same validation metrics though their shards differ.
    assert ranks[0]["metrics"].keys() >= {"val/loss", "val/acc", "val/f1"}
    assert ranks[0]["metrics"] == pytest.approx(ranks[1]["metrics"])
