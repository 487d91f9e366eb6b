import pytest
import torch

from atomdd.augment import DSAConfig, augment, draw
from atomdd.errors import AtomddError
from atomdd.settings import DSA_OPS


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("op", DSA_OPS)
def test_each_op_is_differentiable_and_acts(op):
    cfg = DSAConfig(strategy=op, flip=1.0)  # flip always, so the flip draw is never the identity
    x = torch.rand(16, 3, 16, 16, requires_grad=True)
    y = draw(16, (16, 16), gen(1), cfg).apply(x)
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not torch.allclose(y, x), f"{op} left every image unchanged"


def test_same_draw_gives_same_transform_on_two_batches():
    d = draw(3, (16, 16), gen(2))
    real, syn = torch.rand(3 * 5, 3, 16, 16), torch.rand(3 * 2, 3, 16, 16)
    groups_real, groups_syn = torch.arange(3).repeat_interleave(5), torch.arange(3).repeat_interleave(2)
    out_real, out_syn = d.apply(real, groups_real), d.apply(syn, groups_syn)
    # a group's transform is the same whichever batch it sits in, and repeats exactly
    assert torch.equal(d.apply(real, groups_real), out_real)
    assert torch.equal(d.apply(syn[2:4], groups_syn[2:4]), out_syn[2:4])
    # sample 0 of class 1 in each batch, given the same pixels, is transformed identically
    probe = torch.rand(1, 3, 16, 16)
    real[5:6], syn[2:3] = probe, probe
    assert torch.equal(d.apply(real, groups_real)[5], d.apply(syn, groups_syn)[2])


def test_different_draws_differ_and_same_seed_repeats():
    x = torch.rand(8, 3, 16, 16)
    a, b = augment(x, gen(0)), augment(x, gen(1))
    assert not torch.allclose(a, b)
    assert torch.equal(augment(x, gen(3)), augment(x, gen(3)))


def test_crop_is_an_exact_integer_shift_with_zero_fill():
    d = draw(32, (8, 8), gen(4), DSAConfig(strategy="crop"))
    x = torch.arange(64.0).view(1, 1, 8, 8).repeat(32, 1, 1, 1) + 1
    y = d.apply(x)
    for i in range(32):
        tx, ty = (d.theta[i, :, 2] * 3.5).round().long().tolist()
        shifted = torch.zeros(8, 8)
        src = x[i, 0]
        for r in range(8):
            for c in range(8):
                if 0 <= r + ty < 8 and 0 <= c + tx < 8:
                    shifted[r, c] = src[r + ty, c + tx]
        assert torch.allclose(y[i, 0], shifted, atol=1e-3)


def test_cutout_erases_a_square_of_the_published_size():
    d = draw(64, (16, 16), gen(5), DSAConfig(strategy="cutout"))
    y = d.apply(torch.ones(64, 1, 16, 16))
    erased = (y == 0).flatten(1).sum(1)
    assert erased.max() == 64  # 8×8 = (0.5 · 16)² when the square lies inside the image
    assert (erased > 0).all()


def test_none_is_identity_and_bad_strategy_is_an_error():
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(augment(x, gen(0), DSAConfig(strategy="none")), x)
    with pytest.raises(AtomddError, match="unknown augmentation"):
        draw(1, (8, 8), gen(0), DSAConfig(strategy="color_blur"))
