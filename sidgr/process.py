"""Process lifetime helpers: workers that never outlive their launcher, and whether a pid is alive."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1


def _prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(prctl=None) -> None:
    """Linux: have the kernel SIGKILL this process when its parent (the torchrun agent) dies, so a killed launcher
    never leaves a worker running on its own. A no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    prctl = prctl or _prctl()
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


_FORKS_REGISTERED = False


def forks_die_with_parent() -> None:
    """Every process this one forks from now on dies with its parent too: Megatron's checkpoint writer forks
    helpers of its own, and a worker killed during a save left one of them sleeping forever (seen in CI)."""
    global _FORKS_REGISTERED
    if _FORKS_REGISTERED or not sys.platform.startswith("linux"):
        return
    prctl = _prctl()  # looked up here, not in the child right after a fork
    if prctl is None:
        return
    # the kernel sends the signal when the forking *thread* exits: only forks of the main thread are tied to it
    from_main = [False]

    def before() -> None:
        from_main[0] = threading.current_thread() is threading.main_thread()

    def after_in_child() -> None:
        if from_main[0]:
            die_with_parent(prctl)

    os.register_at_fork(before=before, after_in_child=after_in_child)
    _FORKS_REGISTERED = True


def restart_attempt() -> int:
    """How many times torchrun has restarted this worker group (--max-restarts); 0 on the first attempt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def under_torchrun() -> bool:
    """This process is a worker that torchrun started (its agent sets these)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "WORLD_SIZE" in os.environ


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
