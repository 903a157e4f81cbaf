"""Diagnostics of a tiny trained run: the artefacts exist and hold the right numbers."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from trained_run import train_tiny_run

from trainer.data import ImageDataModule
from trainer.diagnostics import DIAGNOSTICS_DIR, main, read_epoch_metrics
from trainer.models import build_model
from trainer.runs import load_checkpoint, net_state_dict
from trainer.summary import RunSummary

ARTEFACTS = (
    "confusion_matrix.csv", "confusion_matrix.png", "confused_pairs.csv", "classification_report.csv",
    "classification_report.md", "curves.png", "high_loss.png", "predictions.csv", "diagnostics.json",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("diagnostics"))


def read_matrix(path: Path) -> tuple[list[str], list[list[int]]]:
    rows = list(csv.reader(path.open(encoding="utf-8")))
    assert [r[0] for r in rows[1:]] == rows[0][1:]  # rows and columns name the same classes
    return rows[0][1:], [[int(v) for v in r[1:]] for r in rows[1:]]


def recompute_matrix(summary: RunSummary, classes: list[str]) -> list[list[int]]:
    """Argmax predictions of the best checkpoint over the validation set, counted by hand."""
    checkpoint = load_checkpoint(Path(summary.best_checkpoint))
    net = build_model("baseline_cnn", num_classes=len(classes))
    net.load_state_dict(net_state_dict(checkpoint))
    net.eval()
    dm = ImageDataModule(**{**checkpoint["datamodule_hyper_parameters"], "num_workers": 0})
    dm.setup("validate")
    matrix = [[0] * len(classes) for _ in classes]
    with torch.no_grad():
        for images, targets in dm.val_dataloader():
            for target, pred in zip(targets.tolist(), net(images).argmax(1).tolist()):
                matrix[target][pred] += 1
    return matrix


def test_artefacts_exist_and_hold_the_numbers(run):
    _, run_dir, summary = run
    out = run_dir / DIAGNOSTICS_DIR
    for name in ARTEFACTS:
        assert (out / name).is_file(), name
    for name in ("confusion_matrix.png", "curves.png", "high_loss.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 100

    classes, matrix = read_matrix(out / "confusion_matrix.csv")
    assert classes == summary.classes == ["circle", "square", "triangle"]
    val_size = summary.split_sizes["val"]
    assert sum(map(sum, matrix)) == val_size
    assert matrix == recompute_matrix(summary, classes)

    # Accuracy from the matrix is the best checkpoint's logged val/acc (micro accuracy).
    accuracy = sum(matrix[i][i] for i in range(3)) / val_size
    info = json.loads((out / "diagnostics.json").read_text())
    assert info["val_size"] == val_size and info["accuracy"] == pytest.approx(accuracy)
    assert accuracy == pytest.approx(summary.val_acc, abs=1e-6)

    report = {r["class"]: r for r in csv.DictReader((out / "classification_report.csv").open())}
    for i, name in enumerate(classes):
        support = sum(matrix[i])
        predicted = sum(row[i] for row in matrix)
        assert int(report[name]["support"]) == support
        assert float(report[name]["recall"]) == pytest.approx(matrix[i][i] / support if support else 0.0)
        assert float(report[name]["precision"]) == pytest.approx(matrix[i][i] / predicted if predicted else 0.0)
    macro_f1 = sum(float(report[n]["f1"]) for n in classes) / 3
    assert float(report["macro avg"]["f1"]) == pytest.approx(macro_f1)
    assert "| macro avg |" in (out / "classification_report.md").read_text()

    pairs = list(csv.DictReader((out / "confused_pairs.csv").open()))
    expected = {(classes[i], classes[j]): matrix[i][j] for i in range(3) for j in range(3) if i != j and matrix[i][j]}
    assert {(p["true"], p["predicted"]): int(p["count"]) for p in pairs} == expected
    assert [int(p["count"]) for p in pairs] == sorted((int(p["count"]) for p in pairs), reverse=True)

    predictions = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(predictions) == val_size
    assert sum(p["label"] == p["predicted"] for p in predictions) == sum(matrix[i][i] for i in range(3))
    for p in predictions:  # the loss of a correct, confident image is -ln(probability)
        assert float(p["loss"]) >= 0 and 0 < float(p["probability"]) <= 1

    curves = read_epoch_metrics(run_dir / "csv" / "metrics.csv")
    assert sorted(curves["train/loss"]) == sorted(curves["val/acc"]) == list(range(summary.epochs))
    assert max(curves["val/acc"].values()) == pytest.approx(summary.val_acc, abs=1e-6)


def test_command_rebuilds_the_same_numbers(run, capsys):
    _, run_dir, _ = run
    out = run_dir / DIAGNOSTICS_DIR
    before = (out / "confusion_matrix.csv").read_text()
    shutil.rmtree(out)
    assert main([str(run_dir)]) == 0
    assert (out / "confusion_matrix.csv").read_text() == before
    assert all((out / name).is_file() for name in ARTEFACTS)
    assert "confusion_matrix.png" in capsys.readouterr().out


def test_command_on_a_folder_that_is_not_a_run(tmp_path):
    assert main([str(tmp_path)]) == 2
