"""The CPU compat layer is scoped: importing patches nothing, `cpu_compat()` patches on enter and restores the exact
original objects on exit, nests, and a real Megatron run under init_distributed/teardown leaves the process clean."""
from types import ModuleType

import pytest
import torch
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

from compat_worker import CUDA_NAMES, changed, cuda_factory_error, snapshot
from launch import run_torchrun

from sidgr.training import compat
from sidgr.training.compat import CpuDeviceRemap, CpuRNGStatesTracker, cpu_compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is for CPU-only processes")


def test_the_worker_snapshot_covers_every_patched_cuda_attribute():
    assert set(CUDA_NAMES) == set(compat._CUDA_STANDINS)


def test_inside_the_context_cuda_calls_land_on_the_cpu():
    from megatron.core.tensor_parallel import random as mp_random

    with cpu_compat():
        assert compat.is_active()
        assert torch.empty(2, device="cuda").device.type == "cpu"
        assert torch.zeros(2).cuda().device.type == "cpu"
        assert torch.zeros(2).to("cuda:0").device.type == "cpu"
        assert torch.cuda.current_device() == torch.device("cpu")
        assert torch.ones(1).type() == "torch.cuda.FloatTensor"
        assert torch.ones(1).type(torch.float64).dtype == torch.float64
        torch.cuda.synchronize()
        with torch.cuda.stream(torch.cuda.Stream()):
            torch.cuda.current_stream().wait_stream(torch.cuda.default_stream())
        mp_random.model_parallel_cuda_manual_seed(5, tp_rank=0, ep_rank=0, etp_rank=0)
        tracker = mp_random.get_cuda_rng_tracker()
        assert isinstance(tracker, CpuRNGStatesTracker)
        with tracker.fork():
            a = torch.rand(3)
        mp_random.model_parallel_cuda_manual_seed(5, tp_rank=0, ep_rank=0, etp_rank=0)
        with mp_random.get_cuda_rng_tracker().fork():
            assert torch.equal(torch.rand(3), a)


def test_exit_restores_the_original_objects():
    before, error_before = snapshot(), cuda_factory_error()
    assert error_before is not None  # a CPU-only torch refuses CUDA tensors
    with cpu_compat():
        assert changed(before, snapshot()) == sorted(before)  # every watched object was replaced
    assert changed(before, snapshot()) == []
    assert "type" not in vars(torch.Tensor)  # inherited from TensorBase before: deleted again, not shadowed
    assert cuda_factory_error() == error_before
    assert not compat.is_active()


def test_nested_entries_patch_once_and_the_outermost_exit_restores():
    before = snapshot()
    with cpu_compat():
        outer = snapshot()
        with cpu_compat():
            assert changed(outer, snapshot()) == []  # no double patching
            assert sum(isinstance(m, CpuDeviceRemap) for m in _get_current_function_mode_stack()) == 1
        assert changed(outer, snapshot()) == []  # the inner exit restored nothing
        assert torch.empty(1, device="cuda").device.type == "cpu"
    assert changed(before, snapshot()) == []


def test_exit_refuses_while_a_mode_entered_inside_is_still_active():
    before = snapshot()
    ctx, foreign = cpu_compat(), TorchFunctionMode()
    ctx.__enter__()
    foreign.__enter__()
    with pytest.raises(RuntimeError, match="innermost"):
        ctx.__exit__(None, None, None)
    assert compat.is_active()  # nothing was restored half-way
    foreign.__exit__(None, None, None)
    ctx.__exit__(None, None, None)
    assert changed(before, snapshot()) == []
    with pytest.raises(RuntimeError, match="without a matching enter"):
        ctx.__exit__(None, None, None)


def test_restore_deletes_attributes_that_did_not_exist():
    mod = ModuleType("m")
    mod.old = original = object()
    patches = compat._Patches()
    patches.set(mod, "old", 1)
    patches.set(mod, "new", 2)
    patches.restore()
    assert mod.old is original and not hasattr(mod, "new")


# ---- a fresh process: imports, a real Megatron run, teardown ---------------------------------------------------
@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    import json

    out = tmp_path_factory.mktemp("compat") / "report.json"
    run_torchrun("tests/dist/compat_worker.py", 1, str(out), timeout=300)
    return json.loads(out.read_text())


@pytest.mark.dist
def test_importing_the_training_modules_patches_nothing(worker):
    assert worker["changed_by_import"] == []


@pytest.mark.dist
def test_a_megatron_train_step_works_under_init_distributed(worker):
    inside = worker["inside"]
    assert inside["active"] and inside["empty_cuda_device"] == "cpu" and inside["remap_modes"] == 1
    assert inside["type"] == "torch.cuda.FloatTensor"
    assert len(worker["changed_inside"]) == len(CUDA_NAMES) + 5  # Tensor.type twice, mode stack, 2 globals
    losses = worker["train"]["losses"]
    assert all(0 < x < 10 for x in losses) and losses[1] < losses[0]
    assert worker["train"]["param_device"] == "cpu"


@pytest.mark.dist
def test_teardown_leaves_the_process_clean(worker):
    assert worker["changed_after_teardown"] == []
    assert worker["cuda_error_after"] == worker["cuda_error_before"] is not None


@pytest.mark.dist
def test_a_second_init_teardown_cycle_works_and_is_clean(worker):
    assert worker["second_train"] == worker["train"]  # same seed, fresh tracker: the same run
    assert worker["changed_after_second"] == []
