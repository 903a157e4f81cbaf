"""Real runs as a user starts them, as subprocesses: default run folders from any working
directory, the per-epoch lines, the closing summary's commands, the comparison and its rebuild."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ("data.image_size=32", "data.batch_size=8", "data.num_workers=0")


def run_trainer(*args: str, cwd: Path, module: str = "trainer", timeout: int = 300) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def assert_quiet(result: subprocess.CompletedProcess) -> None:
    """No Lightning advert, no dependency deprecation warning, no ONNX exporter chatter."""
    output = result.stdout + result.stderr
    assert "litlogger" not in output and "Tip:" not in output
    assert "deprecated" not in output.lower() and "DeprecationWarning" not in output and "FutureWarning" not in output
    assert "onnxscript" not in output and "onnx_ir" not in output


def test_sweep_without_sweep_dir_from_another_directory(tmp_path, catalog_dataset):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    result = run_trainer(
        "-m", "experiment=baseline_cnn,resnet18", f"data.root={catalog_dataset}", *TINY, "trainer.max_epochs=2", cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_quiet(result)
    sweeps = list((cwd / "runs" / "multirun").iterdir())
    assert len(sweeps) == 1 and sweeps[0].is_dir()
    sweep = sweeps[0]
    assert f"Model comparison ({Path('runs') / 'multirun' / sweep.name})" in result.stdout
    # Not a terminal: no Rich bar, one plain line per epoch per model, also in the job's log file.
    for model, job in (("baseline_cnn", "0_baseline_cnn"), ("resnet18", "1_resnet18")):
        lines = [line for line in result.stdout.splitlines() if line.startswith(f"{model} epoch ")]
        assert len(lines) == 2, result.stdout
        for epoch, line in enumerate(lines, start=1):
            assert re.fullmatch(
                rf"{model} epoch {epoch}/2: train loss \d\.\d{{4}}, val loss \d\.\d{{4}}, val acc [01]\.\d{{4}}, \d+\.\d s", line
            ), line
        log = (sweep / job / "train.log").read_text()
        assert all(line in log for line in lines)
    assert "it/s" not in result.stdout and "Epoch 1/" not in result.stdout  # no Rich bar

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
        # Epochs counted from 1: the best is the first epoch reaching the best val acc, and the
        # checkpoint file is named after it.
        assert summary["best_epoch"] == fit_val.index(max(fit_val)) + 1
        assert Path(summary["best_checkpoint"]).name == f"epoch_{summary['best_epoch']:03d}.ckpt"
        assert Path(summary["best_checkpoint"]).is_file()
        assert summary["data_root"] == str(catalog_dataset.resolve()) and summary["image_size"] == 32
        assert summary["seed"] == 42 and re.fullmatch(r"[0-9a-f]{16}", summary["dataset_fingerprint"])
    assert summaries["resnet18"]["parameters"] > 100 * summaries["baseline_cnn"]["parameters"]
    assert summaries["resnet18"]["dataset_fingerprint"] == summaries["baseline_cnn"]["dataset_fingerprint"]

    table = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert {row["model"] for row in table} == {"baseline_cnn", "resnet18"}
    for row in table:
        summary = summaries[row["model"]]
        assert float(row["val_acc"]) == pytest.approx(summary["val_acc"])
        assert int(row["parameters"]) == summary["parameters"]
        assert row["dataset"] == summary["data_root"] and row["image_size"] == "32" and row["seed"] == "42"
    markdown = (sweep / "comparison.md").read_text()
    heading, table_md = markdown.split("\n\n", 1)
    assert heading.startswith(f"### dataset {catalog_dataset.resolve()} (fingerprint ")
    assert heading.endswith("image size 32 px")
    assert table_md.count("\n") == 4 and "val macro F1" in table_md and "s/epoch" in table_md
    assert "| epochs |" in table_md and "| seed |" in table_md and "trainable" in table_md and "peak RSS MiB" in table_md
    if importlib.util.find_spec("matplotlib"):
        assert (sweep / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (sweep / "comparison.md").unlink()
    rebuilt = run_trainer(str(sweep), module="trainer.compare", cwd=cwd, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout == markdown == (sweep / "comparison.md").read_text()


def next_commands(stdout: str) -> list[list[str]]:
    """The commands of the closing summary's "Next:" block, split as a shell would."""
    lines = stdout.splitlines()
    start = lines.index("Next:")
    return [shlex.split(line) for line in lines[start + 1:] if line.startswith("  ")]


@pytest.mark.slow  # four commands, each importing torch; test_train.py checks the summary in-process
def test_single_run_ends_with_its_summary_and_working_next_commands(tmp_path, catalog_dataset):
    cwd = tmp_path / "work"
    cwd.mkdir()
    result = run_trainer(
        "experiment=baseline_cnn", f"data.root={catalog_dataset}", *TINY, "trainer.max_epochs=2",
        "data.test_fraction=0.2", cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_quiet(result)
    (run,) = (cwd / "runs").iterdir()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_baseline_cnn", run.name)
    summary = json.loads((run / "summary.json").read_text())
    best = summary["best_epoch"]
    assert (run / "checkpoints" / f"epoch_{best:03d}.ckpt").is_file() and summary["test_acc"] is not None

    closing = result.stdout[result.stdout.index("baseline_cnn done: "):].splitlines()
    assert closing[0] == (
        f"baseline_cnn done: best epoch {best} of 2, val acc {summary['val_acc']:.4f}, "
        f"val macro F1 {summary['val_f1']:.4f}, test acc {summary['test_acc']:.4f}"
    )
    assert closing[1] == f"  best checkpoint: runs/{run.name}/checkpoints/epoch_{best:03d}.ckpt"
    assert closing[2] == f"  run folder:      runs/{run.name}"
    assert closing[0] in (run / "train.log").read_text()

    commands = next_commands(result.stdout)
    assert [c[1:3] for c in commands] == [
        ["-m", "trainer.diagnostics"], ["-m", "trainer.export"], ["-m", "trainer.predict"], ["-m", "trainer.serve"],
    ]
    assert commands[0][3:] == [f"runs/{run.name}"] and commands[1][3:] == [f"runs/{run.name}", "exports/baseline_cnn"]
    # Every command but the server runs as printed, from where the run was started.
    shutil.rmtree(run / "diagnostics")
    for command in commands[:3]:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (command, done.stderr[-2000:])
        assert_quiet(done)
    assert (run / "diagnostics" / "confusion_matrix.csv").is_file()
    assert (cwd / "exports" / "baseline_cnn" / "config.json").is_file()
    assert commands[3][3:] == ["exports/baseline_cnn"]


def test_default_run_folders_from_the_repository_root(catalog_dataset):
    """``runs/...`` and ``runs/multirun/...`` under the repository root; removed afterwards."""
    runs = REPO / "runs"
    existed = {path: path.exists() for path in (runs, runs / "multirun")}
    made: list[Path] = []
    try:
        single = run_trainer(f"data.root={catalog_dataset}", *TINY, "debug=fdr", cwd=REPO)
        assert single.returncode == 0, single.stderr[-3000:]
        folder = re.search(r"^  run folder:      (\S+)$", single.stdout, re.M).group(1)
        made.append(REPO / folder)
        assert re.fullmatch(r"runs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_baseline_cnn", folder)
        assert (REPO / folder / "summary.json").is_file()

        sweep = run_trainer("-m", "experiment=baseline_cnn", f"data.root={catalog_dataset}", *TINY, "debug=fdr", cwd=REPO)
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        folder = re.search(r"^Model comparison \((\S+)\):$", sweep.stdout, re.M).group(1)
        made.append(REPO / folder)
        assert re.fullmatch(r"runs/multirun/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", folder)
        assert (REPO / folder / "0_baseline_cnn" / "summary.json").is_file()
        assert (REPO / folder / "comparison.md").is_file()
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
        for path in (runs / "multirun", runs):
            if not existed[path] and path.is_dir() and not any(path.iterdir()):
                path.rmdir()
