"""Comparison of the models of a sweep: a Markdown + CSV table built from every run's summary.json,
and a PNG chart when matplotlib is installed.

``python -m trainer.compare <sweep dir>`` rebuilds and prints it for any sweep folder; the
``ComparisonCallback`` (a Hydra callback, in ``conf/hydra/default.yaml``) does the same at the
end of every multirun.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from trainer.summary import SUMMARY_FILE, read_summary

logger = logging.getLogger(__name__)

MARKDOWN_FILE = "comparison.md"
CSV_FILE = "comparison.csv"
CHART_FILE = "comparison.png"

#: (column title, summary key, format) in table order. Times in seconds; memory in MiB (peak
#: resident memory of the training process, rank 0, and peak CUDA memory allocated by tensors).
COLUMNS: list[tuple[str, str, str]] = [
    ("model", "model", "{}"),
    ("val acc", "val_acc", "{:.3f}"),
    ("val macro F1", "val_f1", "{:.3f}"),
    ("val loss", "val_loss", "{:.3f}"),
    ("test acc", "test_acc", "{:.3f}"),
    ("test macro F1", "test_f1", "{:.3f}"),
    ("params", "parameters", "{:,}"),
    ("trainable", "trainable_parameters", "{:,}"),
    ("epochs", "epochs", "{}"),
    ("s/epoch", "seconds_per_epoch", "{:.2f}"),
    ("train images/s", "train_images_per_sec", "{:.1f}"),
    ("peak RSS MiB", "peak_rss_mb", "{:.0f}"),
    ("peak GPU MiB", "peak_gpu_memory_mb", "{:.0f}"),
    ("run", "run", "{}"),
]


def collect_summaries(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``summary.json`` under ``sweep_dir``, each with ``run`` (its folder, relative).

    Raises:
        FileNotFoundError: ``sweep_dir`` is not a directory.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder not found: {sweep_dir}")
    summaries = []
    for path in sorted(sweep_dir.rglob(SUMMARY_FILE)):
        summary = read_summary(path)
        summary["run"] = path.parent.relative_to(sweep_dir).as_posix() or "."
        summaries.append(summary)
    return summaries


def comparison_rows(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows, best validation accuracy first; columns no run has (e.g. test) are dropped."""
    keys = [key for _, key, _ in COLUMNS if any(s.get(key) is not None for s in summaries)]
    rows = [{key: summary.get(key) for key in keys} for summary in summaries]
    return sorted(rows, key=lambda row: -(row.get("val_acc") or 0.0))


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a GitHub Markdown table (right-aligned numbers; blanks for missing values)."""
    if not rows:
        return "(no runs with a summary.json)\n"
    columns = [(title, key, fmt) for title, key, fmt in COLUMNS if key in rows[0]]
    lines = [
        "| " + " | ".join(title for title, _, _ in columns) + " |",
        "|" + "|".join("---" if key in ("model", "run") else "---:" for _, key, _ in columns) + "|",
    ]
    for row in rows:
        cells = ["" if row[key] is None else fmt.format(row[key]) for _, key, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_chart(rows: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Draw the comparison as a PNG: accuracy per model (validation, and test when present) beside
    training images per second. Returns the path, or ``None`` (nothing drawn) when matplotlib is
    not installed or there are no rows."""
    if not rows or importlib.util.find_spec("matplotlib") is None:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = [str(row["model"]) for row in rows]
    positions = range(len(rows))
    accuracies = [(key, label) for key, label in (("val_acc", "validation"), ("test_acc", "test")) if key in rows[0]]
    width = 0.8 / len(accuracies)
    figure, (acc_ax, speed_ax) = plt.subplots(1, 2, figsize=(4 + 1.6 * len(rows), 4), constrained_layout=True)
    for i, (key, label) in enumerate(accuracies):
        values = [row.get(key) or 0.0 for row in rows]
        acc_ax.bar([x + (i - (len(accuracies) - 1) / 2) * width for x in positions], values, width, label=label)
    acc_ax.set(title="accuracy (best checkpoint)", ylim=(0, 1), xticks=list(positions))
    acc_ax.set_xticklabels(names, rotation=30, ha="right")
    acc_ax.legend(loc="lower right")
    speeds = [row.get("train_images_per_sec") or 0.0 for row in rows]
    speed_ax.bar(list(positions), speeds, 0.6, color="tab:gray")
    speed_ax.set(title="training images / s", xticks=list(positions))
    speed_ax.set_xticklabels(names, rotation=30, ha="right")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def write_comparison(sweep_dir: str | Path) -> str:
    """Write ``comparison.md``, ``comparison.csv`` and (with matplotlib) ``comparison.png`` in
    ``sweep_dir``; return the Markdown table."""
    sweep_dir = Path(sweep_dir)
    rows = comparison_rows(collect_summaries(sweep_dir))
    markdown = to_markdown(rows)
    (sweep_dir / MARKDOWN_FILE).write_text(markdown)
    with open(sweep_dir / CSV_FILE, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["model"])
        writer.writeheader()
        writer.writerows(rows)
    write_chart(rows, sweep_dir / CHART_FILE)
    return markdown


class ComparisonCallback(Callback):
    """Hydra callback: at the end of a multirun, compare the runs of the sweep folder.

    Writes ``comparison.md``, ``comparison.csv`` and ``comparison.png`` in ``hydra.sweep.dir``
    and prints the table.
    A failed job only leaves its row out.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            logger.warning("no sweep folder %s; nothing to compare", sweep_dir)
            return
        markdown = write_comparison(sweep_dir)
        logger.info("comparison written to %s", sweep_dir / MARKDOWN_FILE)
        # The table is the sweep's result: print it plainly so it lands on stdout.
        print(f"\nModel comparison ({sweep_dir}):\n\n{markdown}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer.compare", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder (runs/multirun/<time>) holding summary.json files")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"sweep folder not found: {args.sweep_dir}")
    markdown = write_comparison(args.sweep_dir)
    print(markdown, end="")


if __name__ == "__main__":
    main()
