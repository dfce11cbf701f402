"""CPU compatibility layer for Megatron-Core, scoped to a context.

Megatron-Core assumes CUDA: it seeds and forks the CUDA RNG, places buffers on `torch.cuda.current_device()`,
creates tensors with `device='cuda'` or `.cuda()`, synchronizes streams and asserts `torch.cuda.FloatTensor`.
Inside `with cpu_compat():` all of that lands on the CPU, so the trainer's code is the same on CPU and GPU:
- `torch.cuda.{current_device, synchronize, empty_cache, current_stream, default_stream, Stream, Event, stream,
  manual_seed, manual_seed_all}` become CPU stand-ins / no-ops;
- `torch.Tensor.type()` names CPU float tensors `torch.cuda.*Tensor` (Megatron's type asserts);
- a `TorchFunctionMode` (`CpuDeviceRemap`) rewrites CUDA device arguments to the CPU and routes
  `torch.nn.functional.dropout` (Megatron's attention and hidden dropout, ours) to `training.cpu_dropout`, which
  draws the same Bernoulli mask about four times faster from the same generator;
- Megatron's RNG-tracker globals (`megatron.core.tensor_parallel.random._CUDA_RNG_STATE_TRACKER[_INITIALIZED]`)
  point at a `CpuRNGStatesTracker`.
Importing this module patches nothing. Entering applies the patches; leaving restores the exact original objects
(attributes that did not exist are deleted again), pops the function mode and restores the RNG-tracker globals.
Entering again while active only counts (nesting): the outermost exit restores. The state is process-wide and
the function mode belongs to the entering thread: enter and exit on the same thread, CPU-only processes only.
`sidgr.training.dist.init_distributed` enters it on CPU and `teardown()` leaves it.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

from sidgr.training import cpu_dropout

_MISSING = object()
_CPU = torch.device("cpu")


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)  # a bare int means a CUDA ordinal


class CpuDeviceRemap(TorchFunctionMode):
    """Rewrites CUDA device arguments to the CPU for every torch call (factories, .to, .cuda); dropout goes to
    `cpu_dropout.dropout`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.nn.functional.dropout:
            return cpu_dropout.dropout(*args, **kwargs)
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs = dict(kwargs, device=_CPU)
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], _CPU) + tuple(args[2:])
        return func(*args, **kwargs)


class CpuRNGStatesTracker:
    """Megatron's RNG tracker API (add / fork / get_states / set_states) over the CPU generator."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()
        self._is_initialized = False

    def is_initialized(self):
        return self._is_initialized

    def get_states(self):
        return dict(self.states_)

    def set_states(self, states):
        self._is_initialized = True
        self.states_ = dict(states)

    def add(self, name, seed):
        if seed in self.seeds_:
            raise RuntimeError(f"seed {seed} already exists")
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already exists")
        self._is_initialized = True
        self.seeds_.add(seed)
        outer = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(outer)

    @contextlib.contextmanager
    def fork(self, name="model-parallel-rng"):
        if name not in self.states_:
            raise RuntimeError(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


class _NullStream:
    """Stands in for CUDA streams and events: every method is a no-op."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _cuda_type_alias(original):
    # clip_grads and the distributed optimizer assert `t.type() == 'torch.cuda.FloatTensor'`.
    def tensor_type(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs:
            name = original(self)
            if not self.is_cuda and name.startswith("torch.") and not name.startswith("torch.cuda."):
                return "torch.cuda." + name[len("torch."):]
            return name
        return original(self, dtype, non_blocking, **kwargs)
    return tensor_type


_CUDA_STANDINS = {
    "current_device": lambda: _CPU,
    "synchronize": lambda *a, **k: None,
    "empty_cache": lambda *a, **k: None,
    "current_stream": lambda *a, **k: _NullStream(),
    "default_stream": lambda *a, **k: _NullStream(),
    "Stream": lambda *a, **k: _NullStream(),
    "Event": lambda *a, **k: _NullStream(),
    "stream": lambda *a, **k: contextlib.nullcontext(),
    "manual_seed": lambda seed: None,
    "manual_seed_all": lambda seed: None,
}


class _Patches:
    """Process-wide record of what the layer replaced: (owner, name, value in owner.__dict__ or _MISSING)."""

    def __init__(self):
        self.depth = 0
        self.saved: list[tuple[object, str, object]] = []
        self.mode: CpuDeviceRemap | None = None

    def set(self, owner, name: str, value) -> None:
        self.saved.append((owner, name, vars(owner).get(name, _MISSING)))
        setattr(owner, name, value)

    def restore(self) -> None:
        while self.saved:
            owner, name, old = self.saved.pop()
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)


_STATE = _Patches()


def _apply(state: _Patches) -> None:
    from megatron.core.tensor_parallel import random as mp_random

    for name, standin in _CUDA_STANDINS.items():
        state.set(torch.cuda, name, standin)
    state.set(torch.Tensor, "type", _cuda_type_alias(torch.Tensor.type))
    state.set(mp_random, "_CUDA_RNG_STATE_TRACKER", CpuRNGStatesTracker())
    state.set(mp_random, "_CUDA_RNG_STATE_TRACKER_INITIALIZED", True)
    mode = CpuDeviceRemap()
    mode.__enter__()
    state.mode = mode


def _check_mode_on_top(state: _Patches) -> None:
    stack = _get_current_function_mode_stack()
    if not stack or stack[-1] is not state.mode:
        raise RuntimeError("cpu_compat exit: CpuDeviceRemap is not the innermost torch function mode (a mode "
                           "entered inside the context is still active, or another thread exits); nothing restored")


def _remove(state: _Patches) -> None:
    _check_mode_on_top(state)
    state.mode.__exit__(None, None, None)
    state.mode = None
    state.restore()


def is_active() -> bool:
    return _STATE.depth > 0


class CpuCompat:
    """`with CpuCompat():` the layer is active; nested entries only count, the outermost exit restores."""

    def __enter__(self) -> "CpuCompat":
        if _STATE.depth == 0:
            if torch.cuda.is_available():
                raise RuntimeError("cpu_compat() is for CPU-only processes")
            try:
                _apply(_STATE)
            except BaseException:
                _STATE.restore()
                raise
        _STATE.depth += 1
        return self

    def __exit__(self, *exc) -> bool:
        if _STATE.depth == 0:
            raise RuntimeError("cpu_compat exit without a matching enter")
        if _STATE.depth == 1:
            _remove(_STATE)
        _STATE.depth -= 1
        return False


def cpu_compat() -> CpuCompat:
    """The context manager that applies the layer (see the module docstring). Never use it where CUDA is present."""
    return CpuCompat()
