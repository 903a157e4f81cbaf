"""Benchmark: out-of-sample label issues (``trainer.label_issues``) against the in-sample ranking.

Data: hymenoptera's training photos (``../shared/data/hymenoptera_data/train``, its 243 ``.jpg``
files; its ``formica.jpeg`` and ``imageNotFound.gif``, a placeholder, are left out), copied into a
temporary ImageFolder dataset; ``--flip`` (10 %) of them, drawn with
``--seed``, are filed under the other label, and ``--ood`` (15) photos that are neither ants nor
bees are added, each under a label drawn with the same seed: full-size product photos (office,
healthcare and school furniture) of the mirrored Shopify shop ``../shared/real/sites/bid``
(``ground_truth.json``'s ``full_size_image``; a real shop's photos, made by no one here).
The flipped and added images are the truth.

* out of sample: ``python -m trainer.label_issues data.root=<noisy> folds=K`` with the recipe
  below; its flagged images (``issue`` not empty) are counted, N of them.
* in sample, the review loop before it: ``python -m trainer`` trained on every noisy image
  (the dataset as ``train/``; hymenoptera's own clean ``val/`` photos as validation, for the
  checkpoint choice only), exported (``trainer.export``), and every noisy image scored
  (``trainer.predict <export> <noisy> --out``); the N highest-loss images are its flags.
* also printed: the out-of-sample loss ranking's top N (``label_issues.csv``'s ``loss``).

Printed: precision and recall of each at N, and the recall of flipped and added images apart.
Recipe (both sides): ``experiment=<--experiment> data.image_size=<--image-size>
trainer.max_epochs=<--epochs>``, CPU, seed 42, everything else as shipped.

Reproduce::

    .venv/bin/python -m benchmarks.label_issues [--epochs 10] [--folds 5] [--experiment baseline_cnn]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera_data"
SHOP = REPO.parent / "shared" / "real" / "sites" / "bid"


def shop_photos() -> list[Path]:
    """The shop's full-size product photos, in ground-truth order (files that exist)."""
    truth = json.loads((SHOP / "ground_truth.json").read_text())
    categories = truth.get("categories", {k: v for k, v in truth.items() if isinstance(v, dict) and "items" in v})
    paths = []
    for category in categories.values():
        for item in category["items"]:
            path = SHOP / "site" / item["full_size_image"].lstrip("/")
            if path.is_file() and path not in paths:
                paths.append(path)
    return paths


def build_noisy(root: Path, *, flip: float, ood: int, seed: int) -> dict[str, str]:
    """Write the noisy ImageFolder dataset at ``root``; return ``{relative path: "flipped"|"ood"}``."""
    rng = random.Random(seed)
    photos = sorted((HYMENOPTERA / "train").glob("*/*.jpg"))
    labels = sorted({p.parent.name for p in photos})
    flipped = set(rng.sample(range(len(photos)), round(flip * len(photos))))
    truth: dict[str, str] = {}
    for i, photo in enumerate(photos):
        label = photo.parent.name
        if i in flipped:
            label = rng.choice([other for other in labels if other != label])
            truth[f"{label}/{photo.name}"] = "flipped"
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, root / label / photo.name)
    for j, photo in enumerate(rng.sample(shop_photos(), ood)):
        label = rng.choice(labels)
        name = f"shop_{j:02d}{photo.suffix.lower()}"
        shutil.copyfile(photo, root / label / name)
        truth[f"{label}/{name}"] = "ood"
    return truth


def run(*args: str) -> None:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"failed ({result.returncode}): {' '.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    lines = [line for line in result.stdout.splitlines() if " fold " in line or "done:" in line]
    print("\n".join(f"  {line}" for line in lines), f"\n  ({args[0]}: {time.perf_counter() - start:.0f} s)", flush=True)


def score(flagged: list[str], truth: dict[str, str]) -> str:
    hits = [path for path in flagged if path in truth]
    per_kind = {kind: sum(1 for p in hits if truth[p] == kind) for kind in ("flipped", "ood")}
    totals = {kind: sum(1 for k in truth.values() if k == kind) for kind in ("flipped", "ood")}
    precision = len(hits) / len(flagged) if flagged else 0.0
    return (
        f"precision {precision:.3f}, recall {len(hits) / len(truth):.3f} "
        f"(flipped {per_kind['flipped']}/{totals['flipped']}, added {per_kind['ood']}/{totals['ood']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="baseline_cnn")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--flip", type=float, default=0.10)
    parser.add_argument("--ood", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0, help="seed of the flips and the added photos")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    if not (HYMENOPTERA / "train").is_dir() or not (SHOP / "ground_truth.json").is_file():
        sys.exit(f"needs {HYMENOPTERA} and {SHOP} (the shared test material)")

    work = args.keep or Path(tempfile.mkdtemp(prefix="label_issues_bench_"))
    noisy = work / "noisy"
    truth = build_noisy(noisy, flip=args.flip, ood=args.ood, seed=args.seed)
    images = sum(1 for _ in noisy.glob("*/*"))
    print(f"dataset {noisy}: {images} images, {len(truth)} wrong ({sum(v == 'flipped' for v in truth.values())} flipped, "
          f"{sum(v == 'ood' for v in truth.values())} added from {SHOP.name})", flush=True)
    recipe = [f"experiment={args.experiment}", f"data.image_size={args.image_size}", f"trainer.max_epochs={args.epochs}",
              "~callbacks.progress_bar", "data.num_workers=1"]

    run("trainer.label_issues", f"data.root={noisy}", f"folds={args.folds}", f"hydra.run.dir={work / 'out_of_sample'}", *recipe)
    with (work / "out_of_sample" / "label_issues.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    flagged = [row["path"] for row in rows if row["issue"]]
    n = len(flagged)
    by_loss = [row["path"] for row in sorted(rows, key=lambda row: -float(row["loss"]))][:n]

    # In sample: every noisy image trained on; hymenoptera's clean val only picks the checkpoint.
    split = work / "in_sample_data"
    (split / "train").mkdir(parents=True, exist_ok=True)
    for label_dir in noisy.iterdir():
        shutil.copytree(label_dir, split / "train" / label_dir.name)
    shutil.copytree(HYMENOPTERA / "val", split / "val")
    run("trainer", f"data.root={split}", f"hydra.run.dir={work / 'in_sample'}", "diagnostics=false", *recipe)
    run("trainer.export", str(work / "in_sample"), str(work / "export"))
    run("trainer.predict", str(work / "export"), str(noisy), "--out", str(work / "in_sample_scores.csv"))
    with (work / "in_sample_scores.csv").open(newline="") as handle:
        scored = list(csv.DictReader(handle))
    in_sample = [row["path"] for row in sorted(scored, key=lambda row: -float(row["loss"] or "inf"))][:n]

    print(f"\n{args.experiment}, {args.image_size} px, {args.epochs} epochs, {args.folds} folds; flagged N = {n} of {images}")
    print(f"  label_issues flags (out of sample, cleanlab): {score(flagged, truth)}")
    print(f"  out-of-sample loss, top N:                   {score(by_loss, truth)}")
    print(f"  in-sample loss, top N (trainer.predict):     {score(in_sample, truth)}")
    print(f"  work folder: {work}")


if __name__ == "__main__":
    main()
