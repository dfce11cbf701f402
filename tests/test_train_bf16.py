"""bf16 training (the GPU default) with every floating parameter in bf16 and Megatron's mixed-precision optimizer."""
import json
import math

import pytest

from launch import run_torchrun

pytestmark = [pytest.mark.dist]


def test_bf16_model_is_bf16_throughout_and_trains(tmp_path):
    out = tmp_path / "report.json"
    run_torchrun("tests/dist/bf16_worker.py", 1, str(out), timeout=300)
    report = json.loads(out.read_text())
    assert report["param_dtypes"] == ["torch.bfloat16"]
    losses = report["losses"]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
