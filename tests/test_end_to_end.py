"""The whole path, category to compared models, as ``python -m demo`` runs it (subprocesses)."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from PIL import Image


def run_demo(repo_root: Path, out: Path, *args: str, timeout: int = 900) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "demo", "--out", str(out), *args],
        cwd=repo_root, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def catalog_counts(dataset: Path) -> dict[tuple[str, str], int]:
    with sqlite3.connect(dataset / "catalog.sqlite") as db:
        return {(label, status): n for label, status, n in db.execute("SELECT label, status, COUNT(*) FROM images GROUP BY 1, 2")}


def stored_rows(dataset: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(dataset / "catalog.sqlite") as db:
        return db.execute("SELECT label, path, sha256 FROM images WHERE status = 'stored'").fetchall()


def assert_dataset_matches_catalog(dataset: Path) -> None:
    """Every stored row has its file, every file under a label has its row, and all decode."""
    rows = stored_rows(dataset)
    on_disk = {p.relative_to(dataset).as_posix() for p in dataset.glob("*/*") if not p.parts[-2].startswith(".")}
    assert {path for _, path, _ in rows} == on_disk
    for label, path, sha in rows:
        body = (dataset / path).read_bytes()
        assert path.startswith(f"{label}/") and Path(path).stem == hashlib.sha256(body).hexdigest()
        Image.open(io.BytesIO(body)).load()
    assert not any((dataset / ".tmp").glob("*")) if (dataset / ".tmp").exists() else True


def test_demo_crawls_trains_and_compares(repo_root, tmp_path):
    out = tmp_path / "demo"
    log = run_demo(repo_root, out, "--per-label", "15", "--epochs", "2", "--image-size", "32")
    dataset = out / "dataset"
    counts = catalog_counts(dataset)
    for label in ("circle", "square", "triangle"):
        assert counts[(label, "stored")] == 15
        assert counts[(label, "duplicate")] == 1
        # truncated, not_an_image, http_404 (the tracking pixel is chrome: skipped, no row)
        assert counts[(label, "rejected")] == 3
    assert_dataset_matches_catalog(dataset)
    with (out / "runs" / "comparison.csv").open() as fh:
        models = [row["model"] for row in csv.DictReader(fh)]
    assert sorted(models) == ["baseline_cnn", "resnet18"]
    assert "| baseline_cnn" in log and "| resnet18" in log  # the table is printed
    assert str(dataset) in log and str(out / "runs") in log
    # it says how long it takes, runs the documented driver and shows a line per label
    assert "this usually takes about" in log and "python -m imageclf gallery circle square triangle" in log
    for label in ("circle", "square", "triangle"):
        assert re.search(rf"crawl {label} +done in \d+ s: stored 15, duplicate 1, rejected 3$", log, re.M)
    assert "== 2/3 dataset summary" in log and "epoch 2/2" in log  # per-epoch lines while training


def test_demo_refuses_to_empty_a_folder_it_did_not_make(repo_root, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "demo", "--out", str(tmp_path)], cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode != 0 and "was not made by the demo" in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_images_folder_missing_is_one_line(repo_root, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "demo", "--out", str(tmp_path / "out"), "--images", str(tmp_path / "nope")],
        cwd=repo_root, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == f"error: images folder not found: {tmp_path / 'nope'} (IMAGES=<folder> needs one subfolder of images per label)\n"
    assert not (tmp_path / "out").exists()


def readable_photos(folder: Path) -> int:
    n = 0
    for p in folder.iterdir():
        try:
            with Image.open(p) as im:
                im.load()
            n += 1
        except OSError:
            pass
    return n


def test_real_photos_crawl_and_train(repo_root, tmp_path, hymenoptera):
    """``make demo IMAGES=.../hymenoptera_data/train``: every readable photo stored once."""
    out = tmp_path / "real"
    run_demo(repo_root, out, "--images", str(hymenoptera / "train"), "--epochs", "1", "--image-size", "32")
    dataset = out / "dataset"
    counts = catalog_counts(dataset)
    for label in ("ants", "bees"):
        assert counts[(label, "stored")] == readable_photos(hymenoptera / "train" / label)
    assert_dataset_matches_catalog(dataset)
    # originals are kept byte for byte; only images that needed normalising are re-encoded (PNG)
    source_shas = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (hymenoptera / "train").glob("*/*")}
    for _, path, sha in stored_rows(dataset):
        assert sha in source_shas or path.endswith(".png"), path
    assert (out / "runs" / "comparison.md").exists()
