"""Processes forked by a training worker die with it (Megatron's checkpoint writers fork helpers of their own)."""
import os
import signal
import time

from sidgr.process import forks_die_with_parent


def state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def kill_and_check_orphan_dies(parent: int, orphan: int) -> None:
    """SIGKILL `parent`; `orphan` (its running child) must be killed by the kernel with it within 5 s (a zombie
    until init reaps it)."""
    assert state(orphan) in ("S", "R")
    os.kill(parent, signal.SIGKILL)
    os.waitpid(parent, 0)
    deadline = time.time() + 5
    while state(orphan) not in ("Z", "gone") and time.time() < deadline:
        time.sleep(0.05)
    assert state(orphan) in ("Z", "gone")


def test_a_fork_of_a_registered_process_dies_when_that_process_is_killed(tmp_path):
    child = os.fork()
    if child == 0:  # the "worker": registers, forks a long-lived helper, then waits
        try:
            forks_die_with_parent()
            helper = os.fork()
            if helper == 0:
                time.sleep(60)
                os._exit(0)
            (tmp_path / "helper").write_text(str(helper))
            time.sleep(60)
        finally:
            os._exit(0)
    deadline = time.time() + 10
    while not (tmp_path / "helper").exists() and time.time() < deadline:
        time.sleep(0.05)
    kill_and_check_orphan_dies(child, int((tmp_path / "helper").read_text()))


def test_a_demo_stage_dies_when_the_demo_is_killed(tmp_path):
    """A killed demo (a test's timeout, ^C) must not leave its running stage behind: it once left `sidgr lm eval`."""
    import sys
    from sidgr.experiments.pipeline import Plan, Runner

    child = os.fork()
    if child == 0:  # the "demo": runs one stage that records its pid and then sleeps
        try:
            plan = Plan(out=tmp_path, data=tmp_path, quick=True, nproc=1, steps=None, eval_interval=None,
                        beam_width=1)
            stage = "import os, time; open(os.environ['PIDFILE'], 'w').write(str(os.getpid())); time.sleep(60)"
            Runner(plan, 1)("sleeper", [sys.executable, "-c", stage], env={"PIDFILE": str(tmp_path / "stage")})
        finally:
            os._exit(0)
    deadline = time.time() + 20
    while not (tmp_path / "stage").exists() or not (tmp_path / "stage").read_text():
        assert time.time() < deadline, "the stage never started"
        time.sleep(0.05)
    kill_and_check_orphan_dies(child, int((tmp_path / "stage").read_text()))
