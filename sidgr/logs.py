"""Status lines for every command: `logging` to stderr, shown by rank 0 only under torchrun.

Results a user reads or pipes (tables, metrics) go to stdout with print; progress and status go through
`get_logger(...)`, so torchrun workers do not repeat each line once per rank.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import warnings

_CONFIGURED = False

# Megatron-Core's import-time notes about optional GPU libraries: true on every CPU run, printed by every module
# and every rank. The trainer's launcher says it once instead (training/cli.py).
LIBRARY_NOISE = ("Transformer Engine and Apex are not installed", "Apex is not installed",
                 "full scope is deprecated")


class _LineStream:
    """What tqdm writes, as whole lines: a log file gets one status line per refresh, not carriage returns."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip("\n")
        if line.strip():
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(*args, **kwargs):
    """A tqdm bar on a terminal; elsewhere (a log file, a pipe) a plain status line every 30 s at most."""
    from tqdm import tqdm

    stream = kwargs.pop("file", sys.stderr)
    if not getattr(stream, "isatty", lambda: False)():
        kwargs.setdefault("mininterval", 30.0)
        kwargs.setdefault("maxinterval", 120.0)
        kwargs.setdefault("ncols", 100)
        stream = _LineStream(stream)
    return tqdm(*args, file=stream, **kwargs)


def quiet_library_warnings() -> None:
    """Ignore LIBRARY_NOISE here and in every child process (through PYTHONWARNINGS, which torchrun passes on)."""
    for message in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=re.escape(message), category=UserWarning)
    entries = [f"ignore:{message}:UserWarning" for message in LIBRARY_NOISE]
    current = os.environ.get("PYTHONWARNINGS", "")
    missing = [e for e in entries if e not in current.split(",")]
    if missing:
        os.environ["PYTHONWARNINGS"] = ",".join(([current] if current else []) + missing)


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
