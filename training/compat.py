"""CPU compatibility layer for Megatron-Core (see shared/notes/megatron-on-cpu.md).

Megatron-Core assumes CUDA: it seeds and forks the CUDA RNG, places buffers on `torch.cuda.current_device()`,
creates tensors with `device='cuda'` or `.cuda()`, synchronizes streams and asserts `torch.cuda.FloatTensor`.
`apply_cpu_compat()` makes all of that land on the CPU, process-wide, so the trainer's code is the same on CPU and
GPU. Call it only when CUDA is absent, right after `initialize_model_parallel` and before seeding.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_APPLIED = False
_CPU = torch.device("cpu")


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)  # a bare int means a CUDA ordinal


class CpuDeviceRemap(TorchFunctionMode):
    """Rewrites CUDA device arguments to the CPU for every torch call (factories, .to, .cuda)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
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


def _patch_cuda_module():
    cuda = torch.cuda
    cuda.current_device = lambda: _CPU
    cuda.synchronize = lambda *a, **k: None
    cuda.empty_cache = lambda *a, **k: None
    cuda.current_stream = lambda *a, **k: _NullStream()
    cuda.default_stream = lambda *a, **k: _NullStream()
    cuda.Stream = lambda *a, **k: _NullStream()
    cuda.Event = lambda *a, **k: _NullStream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.manual_seed = lambda seed: None
    cuda.manual_seed_all = lambda seed: None


def _install_rng_tracker():
    from megatron.core.tensor_parallel import random as mp_random

    mp_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def apply_cpu_compat() -> None:
    """Idempotent; process-wide. Never call it where CUDA is available."""
    global _APPLIED
    if _APPLIED:
        return
    if torch.cuda.is_available():
        raise RuntimeError("apply_cpu_compat() is for CPU-only processes")
    _patch_cuda_module()
    torch.Tensor.type = _cuda_type_alias(torch.Tensor.type)
    _install_rng_tracker()
    CpuDeviceRemap().__enter__()  # stays active for the life of the process
    _APPLIED = True
