"""Status output: progress bars write whole lines to logs, Megatron's CPU notes are silenced in children too."""
import io
import os
import subprocess
import sys

from sidgr.logs import LIBRARY_NOISE, progress_bar, quiet_library_warnings


def test_progress_bar_writes_lines_not_carriage_returns_when_not_a_terminal():
    out = io.StringIO()
    for _ in progress_bar(range(4), desc="work", file=out, mininterval=0):
        pass
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) >= 2 and all(line.startswith("work:") for line in lines)
    assert "4/4" in lines[-1]


def test_library_noise_is_ignored_here_and_in_child_processes(monkeypatch):
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    quiet_library_warnings()
    quiet_library_warnings()  # idempotent: entries are not repeated
    assert os.environ["PYTHONWARNINGS"].count(LIBRARY_NOISE[0]) == 1
    code = "import warnings; " + "; ".join(f"warnings.warn({m + ' (detail)'!r}, UserWarning)" for m in LIBRARY_NOISE)
    code += "; warnings.warn('something else', UserWarning)"
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy()).stderr
    assert all(m not in err for m in LIBRARY_NOISE)
    assert "something else" in err
