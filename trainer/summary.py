"""The run summary: one ``summary.json`` per run, the unit the comparison table is built from."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is not imported at run time: `python -m trainer.compare` stays quick
    from torch import nn

SUMMARY_FILE = "summary.json"


def count_parameters(net: nn.Module) -> tuple[int, int]:
    """Return ``(parameters, trainable parameters)`` of ``net``."""
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return total, trainable


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Metric tensors to plain floats (NaN/inf to ``None`` so the JSON stays standard)."""
    out = {}
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
        import sys
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def write_summary(output_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``summary`` as ``<output_dir>/summary.json`` and return the path."""
    path = Path(output_dir) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    return path


def read_summary(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
