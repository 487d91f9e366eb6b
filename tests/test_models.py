"""The model registry's contract: every registered network, every size, options, and vmap."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

from atomdd.errors import AtomddError
from atomdd.models import MODELS, ModelRef, ModelSpec, create_model, parse_models
from atomdd.models.layers import ACTIVATIONS, NORMS, POOLINGS

CLASSES = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def check_forward(model: torch.nn.Module, channels: int, size: int, batch: int = 2) -> None:
    """Shapes of features and logits, the classifier on the embedding, and a gradient to the input."""
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    feats = model.features(x)
    assert feats.activations, "a model must expose at least one activation map"
    for act in feats.activations:
        assert act.dim() == 4 and act.shape[0] == batch
    assert feats.embedding.dim() == 2 and feats.embedding.shape[0] == batch
    assert model.classifier(feats.embedding).shape == (batch, CLASSES)
    logits = model(x)
    assert logits.shape == (batch, CLASSES)
    # the input must reach the logits: not cut off by e.g. instance norm of a 1×1 map (≈1e-8 then)
    assert (logits[0] - logits[1]).abs().max() > 1e-4
    logits.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "name,channels,size", list(itertools.product(MODELS, (1, 3), (8, 28, 32, 64))), ids=str
)
def test_every_model_contract(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, channels, CLASSES, size)
    check_forward(model, channels, size)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, channels, size, size)).shape == (1, CLASSES)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(AtomddError) as err:
        create_model("no_such_net", 3, CLASSES, 32)
    for name in MODELS:
        assert name in str(err.value)


@pytest.mark.parametrize("name", list(MODELS))
def test_bad_options_are_user_errors(name: str) -> None:
    with pytest.raises(AtomddError, match="unknown option"):
        create_model(name, 3, CLASSES, 32, no_such_option=1)
    for key in MODELS[name].choices:
        with pytest.raises(AtomddError, match=key):
            create_model(name, 3, CLASSES, 32, **{key: "not-a-choice"})
    with pytest.raises(AtomddError):
        create_model(name, 2, CLASSES, 32)
    with pytest.raises(AtomddError):
        create_model(name, 3, CLASSES, 65)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_option_of_every_model_is_checked(name: str) -> None:
    """Issue 29: 5. Each numeric option, from its declared range alone: the ends pass; past them,
    a non-finite value or another type is refused naming the option, in a reference and in
    `create_model` alike (before: ZeroDivisionError for a width of 0, a negative dimension for
    -4, a 3.6e17-byte allocation for 100 000 000, ValueError for a NaN ratio)."""
    spec = MODELS[name]
    assert set(spec.options) == set(spec.choices) | set(spec.ranges)  # no option left unchecked
    for key, (lo, hi) in spec.ranges.items():
        ModelRef(name, ((key, lo),)), ModelRef(name, ((key, hi),))
        number = type(spec.options[key])
        step = 1 if number is int else hi / 4
        bad = [lo - step, hi + step, float("nan"), float("inf"), True, "x", *([2.5] if number is int else [])]
        for value in bad:
            with pytest.raises(AtomddError, match=f"model {name}: {key}="):
                ModelRef(name, ((key, value),))
            with pytest.raises(AtomddError, match=f"model {name}: {key}="):
                create_model(name, 3, CLASSES, 32, **{key: value})


def test_a_model_past_the_memory_bound_is_refused_with_its_size() -> None:
    with pytest.raises(AtomddError, match=r"mlp\(width=65536\) would hold 4\.5e\+09 parameters \(18 GB of"):
        create_model("mlp", 3, CLASSES, 32, width=65536)
    with pytest.raises(ValueError, match=r"declare choices or a range for every option \(\['width'\]\)"):
        ModelSpec("bad", "", MODELS["mlp"].builder, options={"width": 128})


@pytest.mark.parametrize("options", [{"dim": 100, "heads": 3}, {"patch": 40}, {"patch": -1}, {"depth": 0}])
def test_vit_bad_shape_options(options: dict) -> None:
    with pytest.raises(AtomddError):
        create_model("vit", 3, CLASSES, 32, **options)


def test_vit_options_and_odd_sizes() -> None:
    model = create_model("vit", 3, CLASSES, 13, depth=2, dim=64, heads=4, patch=3)  # padded to 15 px
    assert model.features(torch.randn(2, 3, 13, 13)).activations[0].shape == (2, 64, 5, 5)
    for size in range(8, 65, 7):
        assert 2 <= create_model("vit", 1, CLASSES, size, depth=1, dim=16).grid <= 8


@pytest.mark.parametrize("norm,act,pool", list(itertools.product(NORMS, ACTIVATIONS, POOLINGS)))
def test_convnet_search_space(norm: str, act: str, pool: str) -> None:
    model = create_model("convnet", 3, CLASSES, 32, norm=norm, act=act, pool=pool, width=32)
    check_forward(model, 3, 32)


@pytest.mark.parametrize(
    "depth,size",
    list(itertools.product((1, 2, 3, 4), (8, 28, 32, 64))),
)
def test_convnet_depths(depth: int, size: int) -> None:
    for channels in (1, 3):
        model = create_model("convnet", channels, CLASSES, size, depth=depth, width=32)
        assert len(model.features(torch.randn(2, channels, size, size)).activations) == depth
        check_forward(model, channels, size)


@pytest.mark.parametrize("name", list(MODELS))
def test_vmap_over_stacked_copies(name: str) -> None:
    """N copies trained at once: functional_call under vmap equals N separate passes (train mode;
    BatchNorm's running stats are stacked buffers, updated per copy)."""
    size = 8
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(create_model(name, 3, CLASSES, size))
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(3, 2, 3, size, size)  # a different batch per copy
    y = torch.tensor([0, 1])

    def logits(p: dict, b: dict, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (xi,))

    def loss(p: dict, b: dict, xi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits(p, b, xi), y)

    expected = torch.stack([m(xi) for m, xi in zip(models, x, strict=True)])
    got = vmap(logits)(*stack_module_state(models), x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    # The batched training step, on two copies to save time. In float64: with batch 2 and 2×2 maps,
    # instance norm amplifies fp32 rounding (grouped vs plain convolution) to ~0.5% differences.
    models = [m.double() for m in models[:2]]
    grads = vmap(grad(loss))(*stack_module_state(models), x[:2].double())
    for i, model in enumerate(models):
        F.cross_entropy(model(x[i].double()), y).backward()
        for key, param in model.named_parameters():
            torch.testing.assert_close(grads[key][i], param.grad, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = create_model(name, 3, CLASSES, 32)
    model.train()
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4) % CLASSES).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"{name}: no gradient reaches {missing}"


def test_model_reference_parses_to_one_canonical_spelling() -> None:
    ref = ModelRef.parse(" convnet(pool=maxpool, depth=2,norm=batchnorm) ")
    assert str(ref) == "convnet(depth=2,norm=batchnorm,pool=maxpool)"
    assert ref.options_for(32) == {"depth": 2, "norm": "batchnorm", "pool": "maxpool"}
    assert ModelRef.parse(str(ref)) == ref and str(ModelRef.parse("mlp")) == "mlp"
    # the published evaluation network: ConvNet depth 4 from 64 px on, unless depth is given
    assert ModelRef.parse("convnet").options_for(64) == {"depth": 4}
    assert ModelRef.parse("convnet").options_for(32) == {}
    assert ModelRef.parse("convnet(depth=2)").options_for(64) == {"depth": 2}
    refs = parse_models("convnet(depth=2,norm=batchnorm),alexnet, vit(depth=2,mlp_ratio=1.5)")
    assert [str(r) for r in refs] == [
        "convnet(depth=2,norm=batchnorm)",
        "alexnet",
        "vit(depth=2,mlp_ratio=1.5)",
    ]
    net = create_model(refs[0].name, 1, CLASSES, 16, **refs[0].options_for(16))
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("convnet(dpth=2)", r"unknown option\(s\) \['dpth'\]; valid options: depth \(default 3\)"),
        ("convnet(norm=layer)", r"norm='layer' is not one of .*instancenorm"),
        ("convnet(depth=two)", r"depth='two' is not of type int"),
        ("convnet(depth)", "options are key=value"),
        ("convnet[depth=2]", r"write a name or name\(key=value"),
        ("resnet9", "valid models: alexnet, convnet"),
    ],
)
def test_bad_model_references_name_the_valid_ones(text: str, message: str) -> None:
    with pytest.raises(AtomddError, match=message):
        ModelRef.parse(text)
