"""Status lines for every command: `logging` to stderr, shown by rank 0 only under torchrun.

Results a user reads or pipes (tables, metrics) go to stdout with print; progress and status go through
`get_logger(...)`, so torchrun workers do not repeat each line once per rank.
"""
from __future__ import annotations

import logging
import os
import sys

_CONFIGURED = False


class RankZeroFilter(logging.Filter):
    """Drops records emitted by processes whose RANK (torchrun's global rank) is not 0; warnings always pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or os.environ.get("RANK", "0") == "0"


def get_logger(name: str) -> logging.Logger:
    """The `sidgr.*` logger, configured once: INFO and up to stderr as `[name] message`, rank 0 only."""
    global _CONFIGURED
    if not _CONFIGURED:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        handler.addFilter(RankZeroFilter())
        root = logging.getLogger("sidgr")
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
        _CONFIGURED = True
    return logging.getLogger(name if name.startswith("sidgr") else f"sidgr.{name}")
