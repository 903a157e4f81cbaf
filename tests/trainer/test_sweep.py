"""A real two-model multirun, as a user runs it: summaries, the comparison, and its rebuild."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_multirun_writes_summaries_and_comparison(tmp_path, catalog_dataset):
    sweep = tmp_path / "sweep"
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [
            sys.executable, "-m", "trainer", "-m", "experiment=baseline_cnn,resnet18",
            f"data.root={catalog_dataset}", "data.image_size=32", "data.batch_size=8", "data.num_workers=0",
            "trainer.max_epochs=2", f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| model |" in result.stdout and "resnet18" in result.stdout
    # Not a terminal: the progress bar logs one plain line per epoch instead of animating.
    assert "epoch 2/2: " in result.stdout and "val/acc=" in result.stdout

    summaries = {}
    for job in ("0_baseline_cnn", "1_resnet18"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        summaries[summary["model"]] = summary
        rows = list(csv.DictReader(open(sweep / job / "csv" / "metrics.csv")))
        fit_val = [float(r["val/acc"]) for r in rows if r["val/acc"]][: summary["epochs"]]
        epoch_times = [float(r["time/epoch_s"]) for r in rows if r.get("time/epoch_s")]
        assert summary["epochs"] == 2 == len(fit_val) == len(epoch_times)
        assert summary["val_acc"] == pytest.approx(max(fit_val), abs=1e-6)
        assert summary["seconds_per_epoch"] == pytest.approx(sum(epoch_times) / 2, rel=1e-4)
        assert summary["train_images_per_sec"] > 0 and summary["peak_rss_mb"] > 50
        assert Path(summary["best_checkpoint"]).is_file()
    assert summaries["resnet18"]["parameters"] > 100 * summaries["baseline_cnn"]["parameters"]

    table = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert {row["model"] for row in table} == {"baseline_cnn", "resnet18"}
    for row in table:
        summary = summaries[row["model"]]
        assert float(row["val_acc"]) == pytest.approx(summary["val_acc"])
        assert int(row["parameters"]) == summary["parameters"]
    markdown = (sweep / "comparison.md").read_text()
    assert markdown.count("\n") == 4 and "val macro F1" in markdown and "s/epoch" in markdown
    assert "trainable" in markdown and "peak RSS MiB" in markdown
    if importlib.util.find_spec("matplotlib"):
        assert (sweep / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (sweep / "comparison.md").unlink()
    rebuilt = subprocess.run(
        [sys.executable, "-m", "trainer.compare", str(sweep)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout == markdown == (sweep / "comparison.md").read_text()
