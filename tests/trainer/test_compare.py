"""Comparisons compare like with like: runs grouped by dataset (folder + content fingerprint) and
image size, one table per group, or a one-line refusal when one table would mix groups."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_testkit import write_catalog_dataset

from trainer.compare import main as compare_main
from trainer.data import ImageDataModule
from trainer.summary import SUMMARY_FILE, RunSummary, dataset_fingerprint
from trainer.train import train

REPO = Path(__file__).resolve().parents[2]


def fingerprint(root: Path) -> str:
    return dataset_fingerprint(ImageDataModule(root=str(root)).records)


def test_fingerprint_follows_content_not_folder(tmp_path):
    a = tmp_path / "a"
    write_catalog_dataset(a, per_class=4)
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    assert fingerprint(a) == fingerprint(copy)
    write_catalog_dataset(copy, per_class=1, start=10)  # one more image per class
    assert fingerprint(copy) != fingerprint(a)
    # A plain ImageFolder with the same pictures under human names: the same content.
    plain = tmp_path / "plain"
    for path in a.glob("*/*.png"):
        (plain / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, plain / path.parent.name / f"photo_{path.stem[:6]}.png")
    assert fingerprint(plain) == fingerprint(a)


@pytest.fixture
def other_dataset(tmp_path) -> Path:
    """Dataset B: other pictures of the same classes, as many as ``catalog_dataset`` has."""
    write_catalog_dataset(tmp_path / "other", per_class=10, start=100)
    return tmp_path / "other"


@pytest.fixture
def runs(tmp_path, make_cfg, catalog_dataset, other_dataset) -> Path:
    """Four real runs (one batch each): dataset A at 32 px with seeds 1 and 2 (in runs/same/),
    A at 48 px, and another dataset B at 32 px."""
    folder = tmp_path / "runs"
    plan = {
        "same/seed1": (catalog_dataset, 32, 1),
        "same/seed2": (catalog_dataset, 32, 2),
        "a48": (catalog_dataset, 48, 1),
        "b32": (other_dataset, 32, 1),
    }
    for name, (root, size, seed) in plan.items():
        cfg = make_cfg("debug=fdr", f"data.image_size={size}", f"seed={seed}", "diagnostics=false", data_root=root)
        train(cfg)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(cfg.paths.output_dir, folder / name)
    return folder


def test_one_table_per_dataset_and_image_size_or_a_refusal(runs, capsys, catalog_dataset, other_dataset):
    # One table across groups: refused in one line, as a command, nothing written.
    result = subprocess.run(
        [sys.executable, "-m", "trainer.compare", str(runs), "--single-table"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: {runs} holds runs of 3 different datasets or image sizes")
    assert lines[0].endswith("(compare a folder of one group, or drop --single-table for one table per group)")
    assert not (runs / "comparison.md").exists()

    # One group asked for one table: granted.
    assert compare_main([str(runs / "same"), "--single-table"]) == 0
    assert capsys.readouterr().out.count("### ") == 1

    # A table per group.
    assert compare_main([str(runs)]) == 0
    markdown = capsys.readouterr().out
    assert markdown == (runs / "comparison.md").read_text()
    sections = markdown.split("### ")[1:]
    assert len(sections) == 3
    headings = {section.splitlines()[0]: section for section in sections}
    a, b = catalog_dataset.resolve(), other_dataset.resolve()
    fa, fb = fingerprint(catalog_dataset), fingerprint(other_dataset)
    assert fa != fb
    expected = {
        f"dataset {a} (fingerprint {fa}, 30 images), image size 32 px": {"same/seed1", "same/seed2"},
        f"dataset {a} (fingerprint {fa}, 30 images), image size 48 px": {"a48"},
        f"dataset {b} (fingerprint {fb}, 30 images), image size 32 px": {"b32"},
    }
    assert set(headings) == set(expected)
    for heading, section in headings.items():
        rows = [line for line in section.splitlines() if line.startswith("| baseline_cnn ")]
        assert {row.split(" | ")[-1].rstrip(" |") for row in rows} == expected[heading]
        assert "| epochs |" in section and "| seed |" in section

    table = list(csv.DictReader(open(runs / "comparison.csv")))
    assert len(table) == 4
    for row in table:
        summary = RunSummary.read(runs / row["run"] / SUMMARY_FILE)
        assert row["dataset"] == summary.data_root and row["dataset_fingerprint"] == summary.dataset_fingerprint
        assert int(row["image_size"]) == summary.image_size and int(row["seed"]) == summary.seed


def test_missing_folder_is_one_line(tmp_path, capsys):
    assert compare_main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: folder not found: ") and err.count("\n") == 1


def test_summary_round_trip_and_older_files(tmp_path):
    summary = RunSummary.from_metrics({"val/acc": 0.5, "val/loss": 1.0}, model="resnet18", image_size=64, seed=3)
    assert summary.val_acc == 0.5 and summary.test_acc is None
    assert RunSummary.read(summary.write(tmp_path)) == summary
    # An older summary.json (no fingerprint, an unknown key): read, fields left unset.
    (tmp_path / SUMMARY_FILE).write_text('{"model": "vgg16", "val_acc": 0.7, "retired_key": 1}')
    old = RunSummary.read(tmp_path / SUMMARY_FILE)
    assert old.model == "vgg16" and old.val_acc == 0.7 and old.dataset_fingerprint is None
    (tmp_path / SUMMARY_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a run summary"):
        RunSummary.read(tmp_path / SUMMARY_FILE)
