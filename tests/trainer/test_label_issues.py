"""`python -m trainer.label_issues`: folds, a tiny real k-fold run, its CSV, and crawler.review reading it."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from trainer_testkit import move_catalog_to_postgres, write_catalog_dataset
from uvicorn_thread import live_server

from trainer.data import ImageRecord
from trainer.label_issues import FIELDS, MISLABELLED, NO_CLASS, assign_folds, find_issues, label_issues, low_outliers

REPO = Path(__file__).resolve().parents[2]


def record(label: str, content_id: str, phash: str | None = None) -> ImageRecord:
    return ImageRecord(Path(f"/x/{label}/{content_id}.png"), label, content_id, phash)


def test_folds_are_stratified_and_keep_near_duplicates_together():
    def phash(i: int) -> str:  # far-apart made-up hashes
        return hashlib.sha256(str(i).encode()).hexdigest()[:16]

    records = [record("a", f"{i:064x}", phash(i)) for i in range(1, 21)]
    records += [record("b", f"{i:064x}", phash(i)) for i in range(100, 110)]
    # Two near-duplicates (1 bit apart and equal) of the first image, filed under the other label.
    flipped = f"{int(phash(1), 16) ^ 1 << 63:016x}"
    records += [record("b", f"{999:064x}", flipped), record("b", f"{998:064x}", phash(1))]
    folds = assign_folds(records, 5, seed=0, max_distance=4)
    assert folds[-1] == folds[-2] == folds[0]
    for label, expected in (("a", 20), ("b", 12)):
        per_fold = [sum(1 for r, f in zip(records, folds) if r.label == label and f == k) for k in range(5)]
        assert sum(per_fold) == expected and max(per_fold) - min(per_fold) <= 3
    # Seeded and stable: the same records give the same folds; another seed deals them otherwise.
    assert assign_folds(records, 5, seed=0, max_distance=4) == folds
    assert assign_folds(records, 5, seed=1, max_distance=4) != folds


def test_find_issues_flags_confident_disagreement_and_feature_outliers():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 20)
    pred_probs = np.where(labels[:, None] == np.arange(2), 0.9, 0.1)
    pred_probs[[3, 25]] = pred_probs[[3, 25]][:, ::-1]  # the model confidently says the other class
    ood = rng.uniform(0.6, 0.9, size=40)
    ood[7] = 0.01
    quality, issues = find_issues(labels, pred_probs, ood, filter_by="prune_by_noise_rate", iqr_scale=1.5)
    assert issues[3] == issues[25] == MISLABELLED and issues[7] == NO_CLASS
    assert sum(map(bool, issues)) == 3
    assert quality[3] == pytest.approx(0.1) and quality[0] == pytest.approx(0.9)
    assert list(low_outliers(np.array([1.0, 1.1, 0.9, 1.0, -5.0]), 1.5)) == [False] * 4 + [True]


@pytest.fixture
def label_issues_cfg(tmp_path: Path):
    def make(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(
                config_name="label_issues",
                return_hydra_config=True,
                overrides=[
                    "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
                    "data.persistent_workers=false", "data.pin_memory=false",
                    "trainer.max_epochs=1", "+trainer.enable_progress_bar=false",
                    "~callbacks.progress_bar", *overrides,
                ],
            )
        with open_dict(cfg):
            cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        HydraConfig().set_config(cfg)
        return cfg

    yield make
    GlobalHydra.instance().clear()


def test_two_fold_run_writes_a_ranked_csv_that_crawler_review_reads(tmp_path, label_issues_cfg, capsys):
    from crawler.review import create_app, load_scores

    root = tmp_path / "dataset"
    paths = write_catalog_dataset(root, per_class=6, classes=("circle", "square"))
    out = label_issues(label_issues_cfg(f"data.root={root}", "folds=2"))

    assert out == tmp_path / "run" / "label_issues.csv"
    fold_lines = [line for line in capsys.readouterr().out.splitlines() if " fold " in line]
    assert [line.split(" fold ")[1].split(":")[0] for line in fold_lines] == ["1/2", "2/2"]
    for fold in (1, 2):
        assert list((tmp_path / "run" / f"fold_{fold}" / "checkpoints").glob("epoch_*.ckpt"))

    with out.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == FIELDS
        rows = list(reader)
    assert sorted(row["path"] for row in rows) == sorted(paths)  # one row per image
    for row in rows:
        assert row["label"] == row["path"].split("/")[0]
        assert row["issue"] in ("", MISLABELLED, NO_CLASS)
        quality = float(row["label_quality"])
        assert 0 <= quality <= 1 and 0 <= float(row["ood_score"]) <= 1
        assert float(row["loss"]) == pytest.approx(-math.log(quality), abs=1e-4)
        assert row["predicted"] in ("circle", "square")
        assert row["suggested"] == ("" if row["issue"] == NO_CLASS else row["predicted"])
    # Worst first: flagged rows, then the rest, each by rising label quality.
    keys = [(row["issue"] == "", float(row["label_quality"])) for row in rows]
    assert keys == sorted(keys)

    # crawler.review takes it as a scores file and ranks each label by its loss.
    scores = load_scores(out)
    with live_server(create_app(root, scores)) as url:
        with urllib.request.urlopen(f"{url}api/images?label=circle") as response:
            items = json.load(response)["images"]
    circle_rows = {row["path"]: row for row in rows if row["label"] == "circle"}
    assert {item["path"] for item in items} == set(circle_rows)
    assert [item["loss"] for item in items] == sorted((float(r["loss"]) for r in circle_rows.values()), reverse=True)


def test_folds_read_a_postgresql_catalog(tmp_path, label_issues_cfg, postgres_url, capsys):
    root = tmp_path / "dataset"
    paths = write_catalog_dataset(root, per_class=6, classes=("circle", "square"))
    move_catalog_to_postgres(root, postgres_url)
    out = label_issues(label_issues_cfg(f"data.root={root}", f"data.catalog_url={postgres_url}", "folds=2"))
    with out.open(newline="") as handle:
        assert sorted(row["path"] for row in csv.DictReader(handle)) == sorted(paths)
    assert f"--catalog-url {postgres_url}" in capsys.readouterr().out  # the review command to run


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "data.root is not set"),
        (["data.root={root}", "folds=1"], "at least 2 folds"),
        (["data.root={root}", "folds=9"], "fewer images than folds=9"),
        (["data.root={root}/nowhere"], "does not exist"),
        (["data.root={root}", "trainer=ddp_cpu"], "one device"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(tmp_path, args, expected):
    root = tmp_path / "dataset"
    write_catalog_dataset(root, per_class=4, classes=("circle", "square"))
    result = subprocess.run(
        [sys.executable, "-m", "trainer.label_issues", *(a.format(root=root) for a in args), f"paths.log_dir={tmp_path / 'runs'}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
