"""The fused ConvNet block kernel against PyTorch's ops: values and gradients, every power and
every choice of sums, the cases that must fall back, a build without a compiler, NaN, thread
counts, and a whole distillation made both ways."""

import copy
from dataclasses import replace

import pytest
import torch

from atomdd.data import Dataset
from atomdd.distillation.config import make_config
from atomdd.distillation.driver import Distiller
from atomdd.matching import CHANNEL, SPATIAL, power_sums, statistics
from atomdd.models import create_model, fused
from atomdd.settings import MatchConfig

# where no C compiler is found the kernel is not built and PyTorch's ops run (the test below without
# a compiler checks that on every machine); the comparisons need the kernel
needs_kernel = pytest.mark.skipif(fused.library() is None, reason="no C compiler here: nothing to compare")


def _net(width: int = 8, size: int = 16, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model("convnet", 3, 4, size, width=width, **options)
    for block in net.blocks:  # an affine norm that is not the identity, as in a trained network
        if isinstance(block["norm"], torch.nn.GroupNorm):
            torch.nn.init.normal_(block["norm"].weight, 1.0, 0.3)
            torch.nn.init.normal_(block["norm"].bias, 0.0, 0.3)
    return net.requires_grad_(False)


def _reference(net, x, powers):
    """The same sums from PyTorch's ops in float64."""
    feats = copy.deepcopy(net).double().features(x.double())
    sums = []
    for f, (p_sp, p_ch) in zip(feats.activations, powers, strict=True):
        sp = None if p_sp is None else power_sums(f, p_sp, [SPATIAL])[0]
        ch = None if p_ch is None else power_sums(f, p_ch, [CHANNEL])[0]
        sums.append((sp, ch))
    return sums, feats.embedding


POWER_CASES = [
    [(4.0, 4.0), (4.0, 4.0), (None, None)],  # ATOM
    [(2.0, None), (2.0, None), (None, None)],  # DataDAM's paper
    [(1.0, 1.0), (None, 4.0), (4.0, 2.0)],  # powers mixed, p = 1 (the published DataDAM code)
    [(None, None)] * 3,  # DM: the embedding alone
]


@needs_kernel
@pytest.mark.parametrize("powers", POWER_CASES)
@pytest.mark.parametrize("width", [8, 13])  # 13 channels: the vector loops' tails
def test_sums_and_gradients_match_pytorch(powers, width):
    net = _net(width)
    x = torch.randn(5, 3, 16, 16, requires_grad=True)
    assert fused.fusable(net.blocks, x, powers)
    sums, embedding = net.power_sums(x, powers)
    want_sums, want_embedding = _reference(net, x, powers)
    torch.testing.assert_close(embedding.double(), want_embedding, rtol=1e-5, atol=1e-5)
    outs, wants = [embedding], [want_embedding]
    for pair, want_pair in zip(sums, want_sums, strict=True):
        for s, w in zip(pair, want_pair, strict=True):
            assert (s is None) == (w is None)
            if s is not None:
                torch.testing.assert_close(s.double(), w, rtol=1e-5, atol=1e-5 * w.abs().max().item())
                outs.append(s)
                wants.append(w)
    weights = [torch.randn(o.shape, dtype=torch.float64) for o in outs]
    (grad,) = torch.autograd.grad([(o.double() * g).sum() for o, g in zip(outs, weights, strict=True)], x)
    x64 = x.detach().double().requires_grad_(True)
    want_sums, want_embedding = _reference(net, x64, powers)
    wants = [want_embedding] + [s for pair in want_sums for s in pair if s is not None]
    (want,) = torch.autograd.grad([(w * g).sum() for w, g in zip(wants, weights, strict=True)], x64)
    torch.testing.assert_close(grad.double(), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


@needs_kernel
def test_the_convolutions_run_on_channels_last_maps():
    """The layout oneDNN's convolutions are fastest in (docs/performance.md): every convolution of a
    fused ConvNet gets its input channels-last, the images' included."""
    net, seen = _net(), []
    for block in net.blocks:
        block["conv"].register_forward_hook(
            lambda _m, args, _out: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )
    net.power_sums(torch.randn(2, 3, 16, 16), POWER_CASES[0])
    net.embed(torch.randn(2, 3, 16, 16))
    assert seen == [True] * 6


@needs_kernel
def test_training_through_the_kernel_gives_pytorchs_gradients():
    """The forward pass a model trains and tests with (`embed`): the logits and every parameter's
    gradient (convolutions, norms, classifier) against PyTorch's ops in float64."""
    net = _net().requires_grad_(True)
    x, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    assert fused.fusable(net.blocks, x, [(None, None)] * 3)
    net64 = copy.deepcopy(net).double()  # float64 is not the kernel's: PyTorch's ops run
    logits, want = net(x), net64(x.double())
    torch.testing.assert_close(logits.double(), want, rtol=1e-5, atol=1e-5)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    torch.nn.functional.cross_entropy(want, labels).backward()
    for (name, p), p64 in zip(net.named_parameters(), net64.parameters(), strict=True):
        scale = max(p64.grad.abs().max().item(), 1e-2)  # a conv bias before a norm: a zero gradient
        torch.testing.assert_close(p.grad.double(), p64.grad, rtol=1e-4, atol=1e-4 * scale, msg=name)


@needs_kernel
def test_the_matching_statistics_are_those_of_the_features():
    net, cfg = _net(), MatchConfig()
    x = torch.randn(6, 3, 16, 16)
    fast, embedding = statistics(net, x, 2, cfg, 3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(fused.DISABLE_ENV, "1")
        plain, plain_embedding = statistics(net, x, 2, cfg, 3)
    torch.testing.assert_close(embedding, plain_embedding, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize(
    "why",
    ["batchnorm", "maxpool", "odd map", "bfloat16", "vmap", "power 3", "not square"],
)
def test_what_the_kernel_does_not_do_falls_back(why):
    net = _net(norm="batchnorm" if why == "batchnorm" else "instancenorm")
    if why == "maxpool":
        net = _net(pool="maxpool")
    size = {"odd map": 12, "not square": 16}.get(why, 16)  # 12 px: the third block's map is 3×3
    x = torch.randn(2, 3, size, 8 if why == "not square" else size)
    powers = [(3.0 if why == "power 3" else 4.0, 4.0)] * 2 + [(None, None)]
    if why == "bfloat16":
        x = x.bfloat16()
    if why == "vmap":
        seen = []
        torch.vmap(lambda v: seen.append(fused.fusable(net.blocks, v, powers)) or v)(x[None])
        assert seen == [False]
        return
    assert not fused.fusable(net.blocks, x, powers)
    assert net.power_sums(x, powers) is None


def test_without_a_compiler_or_when_disabled_pytorch_runs(tmp_path, monkeypatch):
    monkeypatch.setenv(fused.DISABLE_ENV, "1")
    assert fused.library() is None
    monkeypatch.delenv(fused.DISABLE_ENV)
    monkeypatch.setenv(fused.KERNEL_DIR_ENV, str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    fused._library.cache_clear()
    try:
        assert fused.library() is None
        net = _net()
        assert net.power_sums(torch.randn(2, 3, 16, 16), [(4.0, 4.0)] * 3) is None
        assert not list(tmp_path.rglob("*.so"))
    finally:
        fused._library.cache_clear()


@needs_kernel
def test_a_nan_reaches_the_sums_as_in_pytorch():
    net = _net()
    x = torch.randn(3, 3, 16, 16)
    x[1, 0, 4, 4] = float("nan")
    sums, embedding = net.power_sums(x, [(4.0, 4.0)] * 3)
    assert torch.isnan(sums[0][0][1]).any() and torch.isnan(embedding[1]).any()
    assert torch.isfinite(sums[0][0][[0, 2]]).all()  # the other samples untouched


@needs_kernel
def test_the_thread_count_does_not_change_a_bit():
    net = _net(width=16, size=32)
    x = torch.randn(7, 3, 32, 32, requires_grad=True)
    threads, results = torch.get_num_threads(), []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            sums, embedding = net.power_sums(x, [(4.0, 4.0)] * 3)
            loss = embedding.square().sum() + sum(s.sum() for pair in sums for s in pair)
            results.append((embedding, *(s for pair in sums for s in pair), *torch.autograd.grad(loss, x)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def _problem() -> Dataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4 * 24, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(4).repeat_interleave(24)
    names = ("a", "b", "c", "d")
    return Dataset("random32", images, labels, images[:8], labels[:8], names, (0.5,) * 3, (0.25,) * 3)


@needs_kernel
@pytest.mark.parametrize("method", ["atom", "dm"])
def test_a_distillation_is_the_same_with_and_without_the_kernel(method, monkeypatch):
    """Three steps both ways: the images agree within the golden test's pixel tolerance (the
    rounding of another summation order, as on another CPU)."""
    cfg = make_config("cifar10", 2, method, iterations=3, zca=False, width=16, batch_real=8)
    sets = []
    for disabled in ("", "1"):
        monkeypatch.setenv(fused.DISABLE_ENV, disabled)
        d = Distiller(replace(cfg, dataset="random32"), data=_problem())
        for _ in range(3):
            d.step()
        sets.append(d.syn.detach().clone())
    assert (sets[0] - sets[1]).abs().max() < 3e-4
    assert not torch.equal(sets[0], sets[1])  # the kernel did run (it rounds otherwise)


@pytest.mark.parametrize(("channels", "size", "padding"), [(3, 32, 1), (1, 28, 3)])
def test_the_first_convolutions_input_gradient_as_a_matmul_and_a_fold(channels, size, padding):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(channels, 16, 3, padding=padding).double().requires_grad_(False)
    x = torch.randn(3, channels, size, size, dtype=torch.float64, requires_grad=True)
    g = torch.randn(conv(x).shape, dtype=torch.float64)
    (ours,) = torch.autograd.grad(fused._conv(conv, x), x, g)
    (theirs,) = torch.autograd.grad(conv(x), x, g)
    torch.testing.assert_close(ours, theirs)
    small = torch.nn.Conv2d(channels, 4, 3, padding=padding).double().requires_grad_(False)
    x = torch.randn(2, channels, 6, 6, dtype=torch.float64, requires_grad=True)  # a Jacobian that fits
    assert torch.autograd.gradcheck(lambda v: fused._conv(small, v), (x,))
