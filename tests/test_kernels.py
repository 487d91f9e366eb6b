"""The engine's rewritten operations against the plain PyTorch ones they replace: values and
gradients to float tolerance, the fallbacks, and vmap (the batched evaluation path)."""

import pytest
import torch
import torch.nn.functional as F

from atomdd.matching import CHANNEL, SPATIAL, power_sums
from atomdd.models.layers import avg_pool2x2


@pytest.mark.parametrize("shape", [(3, 5, 8, 6), (2, 4, 2, 2), (2, 3, 7, 6), (1, 2, 5, 5)])
def test_avg_pool_matches_pytorch_in_values_and_gradients(shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn(F.avg_pool2d(x, 2).shape, dtype=torch.float64)
    ours, theirs = avg_pool2x2(x), F.avg_pool2d(x, 2)
    torch.testing.assert_close(ours, theirs)
    (grad_ours,) = torch.autograd.grad(ours, x, g)
    (grad_theirs,) = torch.autograd.grad(theirs, x, g)
    torch.testing.assert_close(grad_ours, grad_theirs)
    assert torch.autograd.gradcheck(avg_pool2x2, (x,))


def test_avg_pool_of_a_non_contiguous_map_and_under_vmap():
    x = torch.randn(4, 3, 6, 8).transpose(2, 3)  # falls back to PyTorch's pool
    torch.testing.assert_close(avg_pool2x2(x), F.avg_pool2d(x, 2))
    stacked = torch.randn(5, 2, 3, 8, 8, requires_grad=True)
    out = torch.vmap(avg_pool2x2)(stacked)
    torch.testing.assert_close(out, F.avg_pool2d(stacked.flatten(0, 1), 2).view(5, 2, 3, 4, 4))
    out.square().sum().backward()
    want = torch.autograd.grad(F.avg_pool2d(stacked.flatten(0, 1), 2).square().sum(), stacked)[0]
    torch.testing.assert_close(stacked.grad, want)


@pytest.mark.parametrize("p", [2.0, 4.0, 3.0, 1.5])
@pytest.mark.parametrize("dims", [[SPATIAL, CHANNEL], [SPATIAL], [CHANNEL]])
def test_power_sums_match_the_formula_in_values_and_gradients(p, dims):
    torch.manual_seed(0)
    f = torch.randn(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    ours = power_sums(f, p, dims)
    plain = [f.abs().pow(p).sum(d) for d in dims]
    for a, b in zip(ours, plain, strict=True):
        torch.testing.assert_close(a, b)
    gs = [torch.randn_like(b) for b in plain]
    torch.testing.assert_close(torch.autograd.grad(ours, f, gs), torch.autograd.grad(plain, f, gs))
    assert torch.autograd.gradcheck(lambda f: tuple(power_sums(f, p, dims)), (f,))


def test_power_sums_when_only_one_output_is_used():
    f = torch.randn(2, 3, 4, 4, requires_grad=True)
    spatial, _ = power_sums(f, 4.0, [SPATIAL, CHANNEL])
    (grad,) = torch.autograd.grad(spatial.sum(), f)
    torch.testing.assert_close(grad, 4 * f.detach().pow(3))
