"""Comparison of the models of a sweep: a Markdown + CSV table built from every run's summary.json,
and a PNG chart when matplotlib is installed.

Only like is compared with like: runs are grouped by dataset (its folder and the content
fingerprint in the run summary, ``trainer.summary.dataset_fingerprint``) and image size, with one
table per group, each headed by its dataset and image size.

``python -m trainer.compare <folder>`` rebuilds and prints it for any folder of runs (a sweep
folder, or ``runs/`` with everything in it); ``--single-table`` refuses runs of more than one
group instead. The ``ComparisonCallback`` (a Hydra callback, in ``conf/hydra/default.yaml``) does
the same at the end of every multirun.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from trainer.errors import UserError, report
from trainer.quiet import quiet_cli
from trainer.summary import SUMMARY_FILE, RunSummary

logger = logging.getLogger(__name__)

MARKDOWN_FILE = "comparison.md"
CSV_FILE = "comparison.csv"
CHART_FILE = "comparison.png"

#: (column title, RunSummary field or "run", format) in table order. Times in seconds; memory in
#: MiB (peak resident memory of the training process, rank 0, and peak CUDA memory allocated by
#: tensors).
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
    ("best epoch", "best_epoch", "{}"),
    ("seed", "seed", "{}"),
    ("s/epoch", "seconds_per_epoch", "{:.2f}"),
    ("train images/s", "train_images_per_sec", "{:.1f}"),
    ("peak RSS MiB", "peak_rss_mb", "{:.0f}"),
    ("peak GPU MiB", "peak_gpu_memory_mb", "{:.0f}"),
    ("run", "run", "{}"),
]
#: CSV columns naming each row's group (the Markdown names it in the heading above the table).
GROUP_COLUMNS = ["dataset", "dataset_fingerprint", "image_size"]


@dataclass(frozen=True)
class RunGroup:
    """Runs that are comparable: the same dataset (folder and content) at the same image size.

    ``None`` fields: summaries written before this was recorded.
    """

    data_root: str | None
    dataset_fingerprint: str | None
    image_size: int | None

    @classmethod
    def of(cls, summary: RunSummary) -> RunGroup:
        return cls(summary.data_root, summary.dataset_fingerprint, summary.image_size)

    def short(self) -> str:
        """``/data/insects [3f2a9c0d1e2b4a5f] at 64 px``."""
        return f"{self.data_root or '?'} [{self.dataset_fingerprint or '?'}] at {self.image_size} px"

    def describe(self, images: int | None = None) -> str:
        """``dataset /data/insects (fingerprint 3f2a..., 480 images), image size 64 px``."""
        dataset = self.data_root or "unknown (summary from an older version)"
        details = [f"fingerprint {self.dataset_fingerprint}" if self.dataset_fingerprint else "no fingerprint"]
        if images is not None:
            details.append(f"{images} images")
        size = f"{self.image_size} px" if self.image_size is not None else "unknown"
        return f"dataset {dataset} ({', '.join(details)}), image size {size}"


def collect_summaries(folder: str | Path) -> list[tuple[str, RunSummary]]:
    """Every ``summary.json`` under ``folder``, each with its run folder relative to ``folder``.

    A file that is not a readable run summary is skipped with a warning.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    summaries = []
    for path in sorted(folder.rglob(SUMMARY_FILE)):
        try:
            summary = RunSummary.read(path)
        except (OSError, ValueError) as exc:
            logger.warning("skipped %s: %s", path, exc)
            continue
        summaries.append((path.parent.relative_to(folder).as_posix() or ".", summary))
    return summaries


def group_runs(summaries: list[tuple[str, RunSummary]]) -> dict[RunGroup, list[tuple[str, RunSummary]]]:
    """The runs by :class:`RunGroup`, groups in order of first appearance."""
    groups: dict[RunGroup, list[tuple[str, RunSummary]]] = {}
    for run, summary in summaries:
        groups.setdefault(RunGroup.of(summary), []).append((run, summary))
    return groups


def comparison_rows(summaries: list[tuple[str, RunSummary]]) -> list[dict[str, Any]]:
    """Table rows of one group, best validation accuracy first; columns no run has (e.g. test)
    are dropped."""
    values = [{key: run if key == "run" else getattr(summary, key) for _, key, _ in COLUMNS} for run, summary in summaries]
    keys = [key for _, key, _ in COLUMNS if any(row[key] is not None for row in values)]
    rows = [{key: row[key] for key in keys} for row in values]
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


def chart_name(index: int, groups: int) -> str:
    """``comparison.png``, or ``comparison-<n>.png`` (``n`` from 1) when there are several groups."""
    return CHART_FILE if groups == 1 else f"{Path(CHART_FILE).stem}-{index + 1}{Path(CHART_FILE).suffix}"


def write_comparison(folder: str | Path, *, single_table: bool = False) -> str:
    """Write ``comparison.md``, ``comparison.csv`` and (with matplotlib) the charts in ``folder``;
    return the Markdown: per group of comparable runs, a heading naming the dataset and image size,
    then its table.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        UserError: ``single_table`` and the runs span more than one group (nothing is written).
    """
    folder = Path(folder)
    groups = group_runs(collect_summaries(folder))
    if single_table and len(groups) > 1:
        described = "; ".join(group.short() for group in groups)
        raise UserError(
            f"{folder} holds runs of {len(groups)} different datasets or image sizes, which one table would mix: "
            f"{described} (compare a folder of one group, or drop --single-table for one table per group)"
        )
    sections, csv_rows = [], []
    for index, (group, runs) in enumerate(groups.items()):
        rows = comparison_rows(runs)
        images = runs[0][1].dataset_images
        sections.append(f"### {group.describe(images)}\n\n{to_markdown(rows)}")
        group_values = dict(zip(GROUP_COLUMNS, (group.data_root, group.dataset_fingerprint, group.image_size)))
        csv_rows += [{**group_values, **row} for row in rows]
        write_chart(rows, folder / chart_name(index, len(groups)))
    markdown = "\n".join(sections) if sections else to_markdown([])
    (folder / MARKDOWN_FILE).write_text(markdown)
    fields = GROUP_COLUMNS + [key for _, key, _ in COLUMNS if any(key in row for row in csv_rows)]
    with open(folder / CSV_FILE, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(csv_rows)
    return markdown


class ComparisonCallback(Callback):
    """Hydra callback: at the end of a multirun, compare the runs of the sweep folder.

    Writes ``comparison.md``, ``comparison.csv`` and ``comparison.png`` in ``hydra.sweep.dir``
    and prints the tables (one per dataset and image size, see the module doc).
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
        print(f"\nModel comparison ({sweep_dir}):\n\n{markdown}", flush=True)  # noqa: T201


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer.compare FOLDER``; returns the exit status (2: a user's mistake)."""
    parser = argparse.ArgumentParser(prog="python -m trainer.compare", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder of runs: a sweep (runs/multirun/<time>) or runs/")
    parser.add_argument(
        "--single-table", action="store_true",
        help="one table of every run; refused (exit 2) when the runs used different datasets or image sizes",
    )
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        return report(UserError(f"folder not found: {args.folder} (pass a sweep folder, e.g. runs/multirun/<time>, or runs)"))
    try:
        markdown = write_comparison(args.folder, single_table=args.single_table)
    except UserError as exc:
        return report(exc)
    print(markdown, end="")  # noqa: T201
    return 0


if __name__ == "__main__":
    quiet_cli()  # the command line only: tests keep every warning
    sys.exit(main())
