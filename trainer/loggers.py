"""Experiment loggers: a CSV logger that survives a resume, and the optional ones, built only
when chosen (``logger=tensorboard``, ``logger=mlflow``).

The optional loggers' packages are optional dependencies: each builder checks for its package
first and fails with the install command, instead of Lightning's import error deep in Hydra's
instantiate. Keyword arguments go unchanged to the Lightning logger, so config keys are its own.
"""

from __future__ import annotations

import csv
import importlib.util
from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning import loggers
from pytorch_lightning.loggers import Logger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class CSVLogger(loggers.CSVLogger):
    """Lightning's ``CSVLogger`` that, with ``append``, continues an existing ``metrics.csv``.

    Lightning's deletes the file it finds in its folder, so a run resumed in place
    (``resume=true``) would lose the rows of the epochs before the kill. Other arguments are
    ``pytorch_lightning.loggers.CSVLogger``'s.
    """

    def __init__(self, *args: Any, append: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.append = bool(append)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = (_AppendingWriter if self.append else ExperimentWriter)(log_dir=self.log_dir)
        return self._experiment


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Keep the file and its columns; Lightning's writer appends to a file it did not create
        # as long as it knows the header (a new column rewrites the file with the old rows).
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = sorted(next(csv.reader(handle), []))


def require(*packages: str, feature: str) -> None:
    """Raise unless one of ``packages`` is importable.

    Raises:
        ModuleNotFoundError: none is installed; the message names the choice that needs it and
            the ``pip install`` that adds it.
    """
    if not any(importlib.util.find_spec(name) is not None for name in packages):
        raise ModuleNotFoundError(
            f"{feature} needs the {packages[0]!r} package, which is not installed: "
            f"pip install {packages[0]} (or choose logger=csv)"
        )


def tensorboard(**kwargs: Any) -> Logger:
    """``pytorch_lightning.loggers.TensorBoardLogger(**kwargs)``; needs tensorboard (or tensorboardX)."""
    require("tensorboard", "tensorboardX", feature="logger=tensorboard")
    from pytorch_lightning.loggers import TensorBoardLogger

    return TensorBoardLogger(**kwargs)


def mlflow(**kwargs: Any) -> Logger:
    """``pytorch_lightning.loggers.MLFlowLogger(**kwargs)``; needs mlflow (or mlflow-skinny)."""
    require("mlflow", feature="logger=mlflow")
    from pytorch_lightning.loggers import MLFlowLogger

    return MLFlowLogger(**kwargs)
