"""The run summary: one ``summary.json`` per run, the unit the comparison table is built from.

:class:`RunSummary` is the one place its keys are spelled: ``trainer.train`` writes it,
``trainer.compare`` tables it, ``trainer.runs`` reads a finished run back through it.
:func:`closing_summary` is how a run reports it on the console when it ends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # torch is not imported at run time: `python -m trainer.compare` stays quick
    from torch import nn

SUMMARY_FILE = "summary.json"


@dataclass
class RunSummary:
    """What one training run did and reached; ``summary.json`` is this object as JSON.

    Metrics are the best checkpoint's (``val/...`` always, ``test/...`` when the dataset has a
    test split); ``None`` where not measured. Epochs are counted from 1.

    Attributes:
        model: backbone name (``trainer.models`` builder, ``conf/model/<name>.yaml``).
        weights: pretrained weights (torchvision name or state-dict file), ``None`` from scratch.
        finetune: fine-tuning strategy (``scratch``, ``frozen``, ``full``, ``gradual``).
        learning_rate: the optimiser's (peak) learning rate the run trained with.
        metrics: every metric of the best checkpoint's evaluation, ``{"val/acc": 0.85, ...}``.
        val_acc, val_f1, val_loss, test_acc, test_f1, test_loss: the headline ``metrics``
            (accuracy, macro F1, cross-entropy).
        parameters, trainable_parameters: network parameter counts.
        epochs: epochs trained (early stopping may end before ``max_epochs``).
        max_epochs: epochs the run was allowed.
        best_epoch: the epoch of the best checkpoint, ``None`` when none was saved.
        seconds_per_epoch: mean wall seconds of an epoch, validation included.
        train_images_per_sec: training images per second of the training batches (all ranks).
        peak_gpu_memory_mb, peak_rss_mb: peak CUDA memory allocated by tensors and peak
            resident memory of the training process (rank 0), MiB.
        num_classes, classes: class names; index ``i`` is logit ``i``.
        split_sizes: images per split, ``{"train": 200, "val": 50}``.
        image_size: side of the square network input, pixels.
        batch_size: images per batch (per process).
        seed: the run's seed (weights, batches; the split's salt unless ``data.seed`` differs).
        data_root: the dataset folder, absolute.
        dataset_fingerprint: :func:`dataset_fingerprint` of the images the run saw.
        dataset_images: images in the dataset (all splits).
        best_checkpoint: absolute path of the best checkpoint.
        output_dir: the run folder, absolute.
    """

    model: str
    weights: str | None = None
    finetune: str | None = None
    learning_rate: float | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    val_acc: float | None = None
    val_f1: float | None = None
    val_loss: float | None = None
    test_acc: float | None = None
    test_f1: float | None = None
    test_loss: float | None = None
    parameters: int | None = None
    trainable_parameters: int | None = None
    epochs: int | None = None
    max_epochs: int | None = None
    best_epoch: int | None = None
    seconds_per_epoch: float | None = None
    train_images_per_sec: float | None = None
    peak_gpu_memory_mb: float | None = None
    peak_rss_mb: float | None = None
    num_classes: int | None = None
    classes: list[str] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=dict)
    image_size: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    data_root: str | None = None
    dataset_fingerprint: str | None = None
    dataset_images: int | None = None
    best_checkpoint: str | None = None
    output_dir: str | None = None

    @classmethod
    def from_metrics(cls, metrics: dict[str, float | None], **values: Any) -> RunSummary:
        """A summary whose headline fields are read from ``metrics`` (``val/acc`` -> ``val_acc``)."""
        headline = {f"{stage}_{name}": metrics.get(f"{stage}/{name}") for stage in ("val", "test") for name in ("acc", "f1", "loss")}
        return cls(metrics=metrics, **headline, **values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunSummary:
        """Build from a parsed ``summary.json``; keys this version does not know are ignored and
        missing ones (a summary written by an older version) stay ``None``.

        Raises:
            ValueError: no ``model`` key (not a run summary).
        """
        if "model" not in values:
            raise ValueError("not a run summary: no 'model' key")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def write(self, output_dir: str | Path) -> Path:
        """Write ``<output_dir>/summary.json`` and return its path."""
        path = Path(output_dir) / SUMMARY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> RunSummary:
        """Read a ``summary.json`` file.

        Raises:
            OSError: unreadable file. ValueError: not JSON, or not a run summary.
        """
        values = json.loads(Path(path).read_text())
        if not isinstance(values, dict):
            raise ValueError(f"{path}: not a run summary (a JSON object is expected)")
        return cls.from_dict(values)


def _shown(path: str | Path) -> str:
    """``path`` as a person would type it here: relative to the working directory when inside it."""
    path = Path(path)
    try:
        shown = str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = str(path)
    return shlex.quote(shown)


def closing_summary(summary: RunSummary, *, next_steps: bool = True, example: str | Path | None = None) -> list[str]:
    """The lines that end a run: what it reached, where it is, and (``next_steps``) the commands
    that come next (diagnostics, export, predict, serve), with this run's own paths.

    ``example`` is an image for the predict command (a validation image), else a placeholder.
    """
    figures = [f"val acc {summary.val_acc:.4f}" if summary.val_acc is not None else "val acc -"]
    if summary.val_f1 is not None:
        figures.append(f"val macro F1 {summary.val_f1:.4f}")
    if summary.test_acc is not None:
        figures.append(f"test acc {summary.test_acc:.4f}")
    epochs = f"{summary.epochs} epoch{'' if summary.epochs == 1 else 's'}"
    best = f"best epoch {summary.best_epoch} of {summary.epochs}" if summary.best_epoch else epochs
    run_dir = _shown(summary.output_dir or ".")
    lines = [
        f"{summary.model} done: {best}, " + ", ".join(figures),
        f"  best checkpoint: {_shown(summary.best_checkpoint) if summary.best_checkpoint else '(none saved)'}",
        f"  run folder:      {run_dir}",
    ]
    if next_steps and summary.best_checkpoint:
        python = _shown(sys.executable) if os.path.isabs(sys.executable) else "python"
        export = shlex.quote(f"exports/{summary.model}")
        image = _shown(example) if example else "<image or folder>"
        lines += [
            "Next:",
            f"  {python} -m trainer.diagnostics {run_dir}",
            f"  {python} -m trainer.export {run_dir} {export}",
            f"  {python} -m trainer.predict {export} {image}",
            f"  {python} -m trainer.serve {export}",
        ]
    return lines


class _Record(Protocol):
    label: str
    content_id: str
    split: str | None


def dataset_fingerprint(records: Iterable[_Record]) -> str:
    """A content fingerprint of a dataset: 16 hex digits of the SHA-256 of its sorted
    ``label<TAB>content id<TAB>fixed split`` lines (``trainer.data.ImageRecord``).

    Two runs share it exactly when they saw the same images (by content, not file name) under the
    same labels (and the same hand-made split, for ``train/``/``val/`` layouts).
    """
    lines = sorted(f"{r.label}\t{r.content_id}\t{r.split or ''}" for r in records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def count_parameters(net: nn.Module) -> tuple[int, int]:
    """Return ``(parameters, trainable parameters)`` of ``net``."""
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return total, trainable


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Metric tensors to plain floats (NaN/inf to ``None`` so the JSON stays standard)."""
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        value = float(value.item() if hasattr(value, "item") else value)
        out[key] = value if math.isfinite(value) else None
    return out


def reset_peak_rss() -> None:
    """Start a new peak-RSS measurement for this process (Linux: ``/proc/self/clear_refs``).

    Elsewhere a no-op, and ``peak_rss_mb`` reports the peak since the process started. A multirun
    on Hydra's basic launcher runs every job in one process, hence the reset per run.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the high-water mark (Linux >= 4.0)
    except OSError:
        pass


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MiB since ``reset_peak_rss`` (or its start).

    Read from ``VmHWM`` in ``/proc/self/status`` on Linux, else from ``getrusage`` max RSS
    (kilobytes on Linux, bytes on macOS); ``None`` where neither exists (Windows).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
