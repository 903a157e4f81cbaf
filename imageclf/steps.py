"""The steps after the crawl, each a documented command run as a subprocess.

- ``python -m crawler.dataset summary <dataset> --contact-sheet <sheet>``: what was collected.
- ``python -m trainer -m experiment=<m1>,<m2> data.root=<dataset> hydra.sweep.dir=<runs>``:
  one run per model, then the comparison table in the sweep folder.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from imageclf.processes import python_command, run, shown

__all__ = ["check_overrides", "dataset_summary", "hydra_value", "train_sweep"]

_print_lock = threading.Lock()

# Characters that end or split an unquoted value in Hydra's override grammar.
_HYDRA_SPECIAL = set(" ,=[]{}()'\"\\:$*?<>!@#%^&|;`~")


def hydra_value(path: Path) -> str:
    """``path`` as a Hydra override value: quoted when it holds characters the grammar reads."""
    text = str(path)
    if not _HYDRA_SPECIAL.intersection(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _echo(line: str) -> None:
    with _print_lock:
        print(f"  {line}", flush=True)  # noqa: T201


def check_overrides(model: str, dataset: Path, overrides: list[str]) -> str | None:
    """Compose the trainer's config with ``overrides`` without training (``--cfg job``).

    Returns:
        ``None`` when Hydra accepts them, else the first line of its complaint (so a typo is
        caught before a crawl of many minutes, not after).
    """
    cmd = python_command("trainer", f"experiment={model}", f"data.root={hydra_value(dataset)}", *overrides, "--cfg", "job")
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode == 0:
        return None
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1].removeprefix("error:").strip()
    return lines[0] if lines else f"exit status {proc.returncode}"


def has_summary_command() -> bool:
    """Whether this checkout's ``crawler.dataset`` has the ``summary`` subcommand."""
    cmd = python_command("crawler.dataset", "summary", "--help")
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    return proc.returncode == 0


def dataset_summary(dataset: Path, sheet: Path, log: Path) -> tuple[int, str | None]:
    """Print the dataset summary and write the contact sheet.

    Returns:
        ``(exit status, note)``: the note says why the step was skipped (``summary`` missing).
    """
    if not has_summary_command():
        return 0, "skipped: this version of crawler.dataset has no `summary` subcommand"
    cmd = python_command("crawler.dataset", "summary", str(dataset), "--contact-sheet", str(sheet))
    return run(cmd, log, on_stdout=_echo, on_stderr=_echo), None


def train_sweep(models: list[str], dataset: Path, runs: Path, overrides: list[str], log: Path) -> int:
    """Run the sweep; the trainer's stdout (per-epoch lines, tables) reaches the console as it
    is written, and everything (stdout and stderr) goes to ``log``. Returns the exit status."""
    cmd = python_command(
        "trainer", "-m", f"experiment={','.join(models)}",
        f"data.root={hydra_value(dataset)}", f"hydra.sweep.dir={hydra_value(runs)}", *overrides,
    )  # fmt: skip
    print(f"  $ {shown(cmd)}   (log: {log})", flush=True)  # noqa: T201
    return run(cmd, log, on_stdout=_echo)

