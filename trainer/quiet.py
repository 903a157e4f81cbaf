"""Quiet command-line output: what the trainer's commands leave out of a person's console.

Called by the entry points (``python -m trainer``, ``trainer.compare``, ``trainer.diagnostics``,
``trainer.export``, ...), never on import: the test suite keeps every warning, so a deprecation
in a dependency still shows up there.
"""

from __future__ import annotations

import logging
import warnings

#: Loggers whose INFO lines are a library's own progress notes, not ours: the ONNX exporter's
#: optimiser passes (``Skipping constant folding ...``, ``No unused functions to remove``).
CHATTY_LOGGERS = ("onnxscript", "onnx_ir")
#: Where Lightning's ``rank_zero_info`` lines come from.
_LIGHTNING_INFO_LOGGERS = ("lightning_fabric.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero")


class _DropAdverts(logging.Filter):
    """Drop Lightning's "💡 Tip: ... litlogger ..." advert (an INFO line on every ``Trainer``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_cli() -> None:
    """Silence dependency deprecation warnings, Lightning's litlogger tip and the ONNX exporter's
    INFO chatter for the rest of this process. Idempotent.

    Deprecation warnings (``DeprecationWarning``, ``FutureWarning``, Lightning's subclasses) are
    for the developers of this project, who see them in the tests; a user cannot act on them.
    """
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in _LIGHTNING_INFO_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in log.filters):
            log.addFilter(_DropAdverts())
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
