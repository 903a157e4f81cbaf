"""Look at a trained model: confusion matrix, most confused pairs, per-class report, curves, worst images.

``write_diagnostics`` is called by ``trainer.train`` after the best checkpoint's validation pass
and writes into ``<run dir>/diagnostics/``:

- ``confusion_matrix.csv`` / ``.png``: rows are true classes, columns predicted classes, counts of
  validation images (``torchmetrics`` ``MulticlassConfusionMatrix``); the PNG colours each row by
  its share so small classes stay readable.
- ``confused_pairs.csv``: off-diagonal cells, largest first (true, predicted, count, share of the
  true class).
- ``classification_report.csv`` / ``.md``: precision, recall, F1 and support per class, then the
  macro and support-weighted averages (precision of a never-predicted class is 0, as torchmetrics'
  ``zero_division=0``).
- ``curves.png``: loss and accuracy per epoch, train and validation, from the CSV logger's
  ``metrics.csv`` (skipped when the run had no CSV logger).
- ``high_loss.png``: the validation images with the highest cross-entropy loss, each titled with
  its true label, predicted label and predicted probability.
- ``predictions.csv``: every validation image: path, label, predicted, probability, loss.
- ``diagnostics.json``: the headline numbers and the files above.

Rebuild them for a finished run (for instance after a crash, or with a moved dataset)::

    python -m trainer.diagnostics RUN_DIR [--data-root DATASET_DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from dataclasses import dataclass
from inspect import signature
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from trainer.errors import UserError, report
from trainer.quiet import quiet_cli

logger = logging.getLogger(__name__)

DIAGNOSTICS_DIR = "diagnostics"
#: Longest class name drawn on a plot axis or image title, characters.
_MAX_NAME = 18


@dataclass
class ValPredictions:
    """The network's outputs over the validation set, in dataset order.

    Attributes:
        paths: image files, ``N``.
        targets: ``(N,)`` int64 true class indices.
        probs: ``(N, C)`` float32 softmax probabilities.
        losses: ``(N,)`` float32 cross-entropy of each image (nats; no label smoothing).
    """

    paths: list[Path]
    targets: Tensor
    probs: Tensor
    losses: Tensor

    @property
    def preds(self) -> Tensor:
        """``(N,)`` int64 predicted class (argmax)."""
        return self.probs.argmax(dim=1)


@torch.inference_mode()
def predict_validation(net: nn.Module, datamodule: Any) -> ValPredictions:
    """Run ``net`` (eval mode) over ``datamodule``'s validation loader (set up here if needed)."""
    datamodule.setup("validate")
    dataset = datamodule.datasets["val"]
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    logits, targets = [], []
    try:
        for images, batch_targets in datamodule.val_dataloader():
            logits.append(net(images.to(device)).float().cpu())
            targets.append(batch_targets)
    finally:
        net.train(was_training)
    all_logits, all_targets = torch.cat(logits), torch.cat(targets)
    losses = F.cross_entropy(all_logits, all_targets, reduction="none")
    return ValPredictions(list(dataset.paths), all_targets, all_logits.softmax(dim=1), losses)


def confusion_matrix(predictions: ValPredictions, num_classes: int) -> Tensor:
    """``(C, C)`` int64 counts, row = true class, column = predicted class."""
    metric = MulticlassConfusionMatrix(num_classes=num_classes)
    metric.update(predictions.probs, predictions.targets)
    return metric.compute().long()


def confused_pairs(matrix: Tensor, classes: list[str]) -> list[dict[str, Any]]:
    """Off-diagonal cells with a count, largest first (ties: higher share of the true class)."""
    pairs = []
    row_totals = matrix.sum(dim=1)
    for true, predicted in (matrix - torch.diag(torch.diag(matrix))).nonzero().tolist():
        count = int(matrix[true, predicted])
        pairs.append(
            {
                "true": classes[true],
                "predicted": classes[predicted],
                "count": count,
                "share": count / int(row_totals[true]),
            }
        )
    return sorted(pairs, key=lambda p: (-p["count"], -p["share"], p["true"], p["predicted"]))


def class_report(matrix: Tensor, classes: list[str]) -> list[dict[str, Any]]:
    """Per class: precision, recall, F1, support; then ``macro avg`` and ``weighted avg`` rows."""
    m = matrix.double()
    tp = torch.diag(m)
    predicted, support = m.sum(dim=0), m.sum(dim=1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), torch.zeros_like(tp))
    rows = [
        {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support)
    ]
    total = float(support.sum())
    weights = support / total if total else support
    for name, w in (("macro avg", torch.full_like(support, 1 / len(classes))), ("weighted avg", weights)):
        rows.append(
            {
                "class": name,
                "precision": float((precision * w).sum()),
                "recall": float((recall * w).sum()),
                "f1": float((f1 * w).sum()),
                "support": int(total),
            }
        )
    return rows


def write_diagnostics(
    run_dir: str | Path,
    net: nn.Module,
    datamodule: Any,
    *,
    classes: list[str] | None = None,
    grid_images: int = 16,
) -> dict[str, Path]:
    """Write the diagnostics of one run into ``<run_dir>/diagnostics/`` (see module doc).

    Args:
        run_dir: the run folder (its ``csv/metrics.csv``, if any, gives the curves).
        net: the trained network (the best checkpoint's weights), ``(N, 3, H, W)`` -> logits.
        datamodule: a ``trainer.data.ImageDataModule`` (or anything with ``setup``,
            ``val_dataloader``, ``datasets["val"].paths`` and ``classes``).
        classes: class names in logit order; default ``datamodule.classes``.
        grid_images: how many highest-loss images go in ``high_loss.png``.

    Returns:
        Artefact name -> path.
    """
    out = Path(run_dir) / DIAGNOSTICS_DIR
    out.mkdir(parents=True, exist_ok=True)
    classes = list(classes if classes is not None else datamodule.classes)
    predictions = predict_validation(net, datamodule)
    matrix = confusion_matrix(predictions, len(classes))
    pairs = confused_pairs(matrix, classes)
    report = class_report(matrix, classes)
    files = {
        "confusion_matrix_csv": _write_matrix_csv(out / "confusion_matrix.csv", matrix, classes),
        "confusion_matrix_png": _plot_matrix(out / "confusion_matrix.png", matrix, classes),
        "confused_pairs_csv": _write_rows(out / "confused_pairs.csv", pairs, ["true", "predicted", "count", "share"]),
        "report_csv": _write_rows(out / "classification_report.csv", report, ["class", "precision", "recall", "f1", "support"]),
        "report_md": _write_report_md(out / "classification_report.md", report, matrix, pairs),
        "predictions_csv": _write_predictions(out / "predictions.csv", predictions, classes),
        "high_loss_png": _plot_high_loss(out / "high_loss.png", predictions, classes, grid_images),
    }
    curves = _plot_curves(out / "curves.png", Path(run_dir))
    if curves is not None:
        files["curves_png"] = curves
    accuracy = float(torch.diag(matrix).sum()) / max(int(matrix.sum()), 1)
    info = {
        "val_size": int(matrix.sum()),
        "accuracy": accuracy,
        "mean_loss": float(predictions.losses.mean()) if len(predictions.losses) else None,
        "classes": classes,
        "most_confused": pairs[:10],
        "files": {name: path.name for name, path in files.items()},
    }
    files["diagnostics_json"] = out / "diagnostics.json"
    files["diagnostics_json"].write_text(json.dumps(info, indent=2) + "\n")
    logger.info("diagnostics of %d validation images written to %s (accuracy %.3f)", info["val_size"], out, accuracy)
    return files


# -- writers ----------------------------------------------------------------------------------


def _write_rows(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_matrix_csv(path: Path, matrix: Tensor, classes: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *classes])
        for name, row in zip(classes, matrix.tolist()):
            writer.writerow([name, *row])
    return path


def _write_report_md(path: Path, report: list[dict[str, Any]], matrix: Tensor, pairs: list[dict[str, Any]]) -> Path:
    accuracy = float(torch.diag(matrix).sum()) / max(int(matrix.sum()), 1)
    lines = [
        "# Validation report",
        "",
        f"{int(matrix.sum())} images, accuracy {accuracy:.4f}.",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {_md(row['class'])} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |"
        for row in report
    ]
    lines += ["", "## Most confused pairs", ""]
    if pairs:
        lines += ["| true | predicted as | count | share of true class |", "|---|---|---:|---:|"]
        lines += [f"| {_md(p['true'])} | {_md(p['predicted'])} | {p['count']} | {p['share']:.3f} |" for p in pairs[:10]]
    else:
        lines.append("None: every validation image was classified correctly.")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _write_predictions(path: Path, predictions: ValPredictions, classes: list[str]) -> Path:
    preds = predictions.preds
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "predicted", "probability", "loss"])
        for i, image_path in enumerate(predictions.paths):
            pred = int(preds[i])
            writer.writerow(
                [
                    str(image_path),
                    classes[int(predictions.targets[i])],
                    classes[pred],
                    f"{float(predictions.probs[i, pred]):.6f}",
                    f"{float(predictions.losses[i]):.6f}",
                ]
            )
    return path


# -- plots (matplotlib's object API: no pyplot state, no GUI backend) ------------------------


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _short(name: str) -> str:
    return name if len(name) <= _MAX_NAME else name[: _MAX_NAME - 1] + "…"


def _plot_matrix(path: Path, matrix: Tensor, classes: list[str]) -> Path:
    n = len(classes)
    side = min(4 + 0.45 * n, 24)
    fig = _figure(side + 1, side)
    ax = fig.add_subplot()
    counts = matrix.double()
    shares = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    names = [_short(c) for c in classes]
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix ({int(counts.sum())} validation images)")
    if n <= 30:  # beyond that the numbers are unreadable; the CSV has them
        for (i, j), value in zip(((i, j) for i in range(n) for j in range(n)), matrix.flatten().tolist()):
            colour = "white" if shares[i, j] > 0.5 else "black"
            ax.text(j, i, str(value), ha="center", va="center", color=colour, fontsize=8)
    fig.savefig(path)
    return path


def read_epoch_metrics(metrics_csv: Path) -> dict[str, dict[int, float]]:
    """Per-epoch values from a Lightning ``CSVLogger`` ``metrics.csv``: ``{key: {epoch: value}}``.

    Keys: ``train/loss`` (the epoch mean, logged as ``train/loss_epoch``), ``train/acc``,
    ``val/loss``, ``val/acc``. The first value of an epoch wins, so the extra validation of the
    best checkpoint after fitting never overwrites the curve.
    """
    columns = {"train/loss": "train/loss_epoch", "train/acc": "train/acc", "val/loss": "val/loss", "val/acc": "val/acc"}
    values: dict[str, dict[int, float]] = {key: {} for key in columns}
    with metrics_csv.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for key, column in columns.items():
                if row.get(column):
                    values[key].setdefault(epoch, float(row[column]))
    # Epochs past the last trained one come from evaluations after fitting.
    trained = set(values["train/loss"]) | set(values["train/acc"])
    if trained:
        for key in ("val/loss", "val/acc"):
            values[key] = {e: v for e, v in values[key].items() if e <= max(trained)}
    return values


def _plot_curves(path: Path, run_dir: Path) -> Path | None:
    from matplotlib.ticker import MaxNLocator

    found = sorted(run_dir.rglob("metrics.csv"))
    if not found:
        logger.info("no metrics.csv under %s (no CSV logger): no curves", run_dir)
        return None
    values = read_epoch_metrics(found[0])
    fig = _figure(10, 4)
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "acc")):
        for stage, style in (("train", "o-"), ("val", "s-")):
            points = sorted(values[f"{stage}/{metric}"].items())
            if points:
                ax.plot([e + 1 for e, _ in points], [v for _, v in points], style, label=stage)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("cross-entropy loss" if metric == "loss" else "accuracy")
        ax.set_title("Loss" if metric == "loss" else "Accuracy")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    fig.savefig(path)
    return path


def _plot_high_loss(path: Path, predictions: ValPredictions, classes: list[str], count: int) -> Path:
    order = torch.argsort(predictions.losses, descending=True)[:count].tolist()
    cols = max(1, min(4, len(order)))
    rows = max(1, math.ceil(len(order) / cols))
    fig = _figure(3 * cols, 3.3 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    preds = predictions.preds
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, order):
        true, pred = int(predictions.targets[i]), int(preds[i])
        with Image.open(predictions.paths[i]) as image:
            image.thumbnail((256, 256))
            ax.imshow(image.convert("RGB"))
        ax.set_title(
            f"true: {_short(classes[true])}\npred: {_short(classes[pred])} ({float(predictions.probs[i, pred]):.2f})\n"
            f"loss {float(predictions.losses[i]):.2f}",
            fontsize=9,
            color="black" if true == pred else "firebrick",
        )
    if not order:
        axes[0].text(0.5, 0.5, "no validation images", ha="center", va="center")
    fig.suptitle("Highest-loss validation images")
    fig.savefig(path)
    return path


# -- command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer.diagnostics RUN_DIR``: rebuild the diagnostics of a finished run."""
    parser = argparse.ArgumentParser(prog="python -m trainer.diagnostics", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder (with summary.json and checkpoints/)")
    parser.add_argument("--data-root", type=Path, default=None, help="the dataset, if it moved since training")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--grid", type=int, default=16, help="images in high_loss.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from trainer.data import ImageDataModule
    from trainer.runs import load_run

    try:
        run = load_run(args.run_dir)
    except (FileNotFoundError, ValueError) as exc:
        return report(exc)
    hparams = {**run.data_hparams, "num_workers": args.num_workers, "persistent_workers": False, "pin_memory": False}
    if args.data_root is not None:
        hparams["root"] = str(args.data_root)
    if args.batch_size is not None:
        hparams["batch_size"] = args.batch_size
    # Only the arguments today's datamodule takes: a checkpoint may predate a renamed option.
    known = signature(ImageDataModule).parameters
    datamodule = ImageDataModule(**{k: v for k, v in hparams.items() if k in known})
    if datamodule.classes != run.classes:
        return report(
            UserError(
                f"the dataset's classes {datamodule.classes} differ from the run's {run.classes} "
                "(pass the dataset the run was trained on with --data-root)"
            )
        )
    files = write_diagnostics(run.run_dir, run.net, datamodule, classes=run.classes, grid_images=args.grid)
    for path in files.values():
        print(path)
    return 0


if __name__ == "__main__":
    quiet_cli()  # the command line only: tests keep every warning
    sys.exit(main())
