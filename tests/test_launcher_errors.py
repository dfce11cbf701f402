"""What the launcher prints last when torchrun fails: the workers' one-line error, else their last exception."""
import sys

from sidgr.training.cli import run_torchrun

BANNER = "print('=' * 60, file=sys.stderr); print('sidgr.training.train FAILED', file=sys.stderr); " \
         "print('=' * 60, file=sys.stderr); sys.exit(1)"


def fake_torchrun(*lines: str) -> list[str]:
    prints = "".join(f"print({line!r}, file=sys.stderr); " for line in lines)
    return [sys.executable, "-c", f"import sys; {prints}{BANNER}"]


def test_an_unexpected_worker_exception_is_the_last_line_with_its_rank(capfd):
    cmd = fake_torchrun("[rank1]: Traceback (most recent call last):", "[rank1]:   File 'x.py', line 3, in f",
                        "[rank1]: NameError: name 'TESpecProvider' is not defined")
    assert run_torchrun(cmd) == 1
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert last == "sidgr train: error: rank 1 failed: NameError: name 'TESpecProvider' is not defined"


def test_a_workers_own_error_line_wins_over_a_traceback(capfd):
    cmd = fake_torchrun("[rank0]: ValueError: inner", "sidgr train: error: data.parquet: field 'item_ids': bad")
    assert run_torchrun(cmd) == 1
    assert capfd.readouterr().err.strip().splitlines()[-1] == "sidgr train: error: data.parquet: field 'item_ids': bad"


def test_success_adds_nothing(capfd):
    assert run_torchrun([sys.executable, "-c", "import sys; print('[rank0]: KeyError: 1', file=sys.stderr)"]) == 0
    assert capfd.readouterr().err.strip().splitlines()[-1] == "[rank0]: KeyError: 1"
