"""Every test sees unexpected exceptions as exceptions: `sidgr` prints them as one line unless SIDGR_DEBUG is set
(tests/test_bad_inputs.py checks that one line with the variable removed)."""
import pytest


@pytest.fixture(autouse=True)
def unexpected_errors_raise(monkeypatch):
    monkeypatch.setenv("SIDGR_DEBUG", "1")
