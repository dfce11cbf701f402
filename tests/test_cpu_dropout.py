"""CPU dropout (`training.cpu_dropout`, routed by the compat layer): torch's semantics — an unbiased Bernoulli
keep-mask, the gradient through the same mask, identity when not training — drawn from torch's generator, so seeds,
Megatron's RNG-tracker forks and saved RNG states decide it."""
import pytest
import torch

from sidgr.training import cpu_dropout
from sidgr.training.compat import CpuRNGStatesTracker, cpu_compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is for CPU-only processes")

BIG = (64, 4, 33, 33)  # above MIN_ELEMENTS: the bulk path


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_drop_rate_and_scale_are_those_of_p(p):
    torch.manual_seed(0)
    x = torch.rand(BIG) + 0.5
    y = cpu_dropout.dropout(x, p)
    dropped = y == 0
    # the rate over 279k elements: a binomial's standard deviation is below 0.001
    assert abs(dropped.float().mean().item() - p) < 0.005
    kept_scale = 1 - cpu_dropout.rounded_drop_count(p) / cpu_dropout.LEVELS
    torch.testing.assert_close(y[~dropped], x[~dropped] / kept_scale, rtol=1e-6, atol=0)
    assert abs(y.mean().item() / x.mean().item() - 1) < 0.01


def test_gradient_flows_through_the_same_mask():
    torch.manual_seed(1)
    x = torch.randn(BIG, requires_grad=True)
    y = cpu_dropout.dropout(x, 0.3)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, torch.where(y == 0, 0.0, y / x.detach()), rtol=1e-5, atol=1e-6)


def test_identity_when_not_training_or_p_is_zero_and_small_tensors_use_torchs_kernel():
    x = torch.randn(BIG)
    assert cpu_dropout.dropout(x, 0.5, training=False) is x
    assert cpu_dropout.dropout(x, 0.0) is x
    small = torch.randn(8, 8)
    torch.manual_seed(2)
    ours = cpu_dropout.dropout(small, 0.5)
    torch.manual_seed(2)
    torch.testing.assert_close(ours, torch.nn.functional.dropout(small, 0.5))


def test_inplace_writes_into_the_input():
    x = torch.randn(BIG)
    torch.manual_seed(3)
    expected = cpu_dropout.dropout(x.clone(), 0.2)
    torch.manual_seed(3)
    out = cpu_dropout.dropout(x, 0.2, inplace=True)
    assert out is x
    torch.testing.assert_close(x, expected)


def test_the_mask_is_decided_by_torchs_generator_state():
    x = torch.randn(BIG)
    torch.manual_seed(4)
    first, second = cpu_dropout.dropout(x, 0.2), cpu_dropout.dropout(x, 0.2)
    assert not torch.equal(first == 0, second == 0)  # the generator advanced
    torch.manual_seed(4)
    assert torch.equal(cpu_dropout.dropout(x, 0.2), first)
    state = torch.get_rng_state()
    again = cpu_dropout.dropout(x, 0.2)
    torch.set_rng_state(state)
    assert torch.equal(cpu_dropout.dropout(x, 0.2), again)


def test_under_the_compat_layer_dropout_modules_and_functional_calls_use_it():
    x = torch.randn(BIG)
    with cpu_compat():
        torch.manual_seed(5)
        via_module = torch.nn.Dropout(0.2)(x)
        torch.manual_seed(5)
        via_functional = torch.nn.functional.dropout(x, p=0.2, training=True)
    torch.manual_seed(5)
    ours = cpu_dropout.dropout(x, 0.2)
    assert torch.equal(via_module, ours) and torch.equal(via_functional, ours)


def test_megatron_rng_tracker_forks_give_the_same_mask_for_the_same_state():
    """Megatron draws attention dropout inside `get_cuda_rng_tracker().fork()`: equal tracker states, equal masks
    (what TP ranks rely on), and the fork leaves the default generator where it was."""
    x = torch.randn(BIG)
    masks = []
    for _ in range(2):
        tracker = CpuRNGStatesTracker()
        tracker.add("model-parallel-rng", 1234)
        torch.manual_seed(9)
        outer = torch.get_rng_state()
        with tracker.fork():
            masks.append(cpu_dropout.dropout(x, 0.2) == 0)
        assert torch.equal(torch.get_rng_state(), outer)
    assert torch.equal(masks[0], masks[1])
