from dataclasses import replace

import pytest
import torch

from atomdd.errors import AtomddError
from atomdd.matching import (
    channel_attention,
    class_statistics,
    matching_loss,
    spatial_attention,
    term_weights,
)
from atomdd.methods import METHODS, get_method
from atomdd.models import create_model
from atomdd.settings import MatchConfig


def test_attention_maps_follow_the_formula_and_are_unit_norm():
    f = torch.randn(2, 5, 4, 3)
    s, c = spatial_attention(f, 2.0), channel_attention(f, 3.0)
    manual_s = f.abs().pow(2).sum(1).flatten(1)
    manual_c = f.abs().pow(3).sum((2, 3))
    assert torch.allclose(s, manual_s / manual_s.norm(dim=1, keepdim=True))
    assert torch.allclose(c, manual_c / manual_c.norm(dim=1, keepdim=True))
    assert s.shape == (2, 12) and c.shape == (2, 5)


def _setup(method: str, **kw):
    torch.manual_seed(0)
    net = create_model("convnet", 3, 4, 16, width=16).requires_grad_(False)
    cfg = replace(get_method(method).match, **kw)
    return net, cfg


@pytest.mark.parametrize("method", list(METHODS))
def test_loss_is_zero_when_statistics_coincide(method):
    net, cfg = _setup(method)
    x = torch.randn(4 * 3, 3, 16, 16)
    stats = class_statistics(net.features(x), 4, cfg)
    loss, _ = matching_loss(stats, stats, 3, cfg)
    assert loss.item() == 0.0
    # the class mean is what is matched: a permutation within each class changes nothing
    perm = torch.cat([torch.randperm(3) + 3 * k for k in range(4)])
    loss2, _ = matching_loss(class_statistics(net.features(x[perm]), 4, cfg), stats, 3, cfg)
    assert loss2.item() < 1e-8
    # and it is zero only then: other images, or the classes swapped, cost something
    other, _ = matching_loss(class_statistics(net.features(x + torch.randn_like(x)), 4, cfg), stats, 3, cfg)
    swap = torch.cat([x[3:6], x[:3], x[6:]])
    swapped, _ = matching_loss(class_statistics(net.features(swap), 4, cfg), stats, 3, cfg)
    assert other.item() > 1e-3 and swapped.item() > 1e-3


@pytest.mark.parametrize(
    "weights",
    [
        dict(spatial=1, channel=0, embedding=0),
        dict(spatial=0, channel=1, embedding=0),
        dict(spatial=0, channel=0, embedding=1),
    ],
)
def test_each_term_reaches_the_pixels(weights):
    net, cfg = _setup("atom", **weights)
    real = torch.randn(4 * 6, 3, 16, 16)
    syn = torch.randn(4 * 2, 3, 16, 16, requires_grad=True)
    with torch.no_grad():
        real_stats = class_statistics(net.features(real), 4, cfg)
    loss, terms = matching_loss(class_statistics(net.features(syn), 4, cfg), real_stats, 3, cfg)
    loss.backward()
    assert loss > 0 and len(terms) >= 1
    assert torch.isfinite(syn.grad).all() and syn.grad.abs().sum() > 0


def test_presets_differ_exactly_in_their_terms():
    weights = {m: c.match for m, c in METHODS.items()}
    kinds = {m: {name.rstrip("0123456789") for name, _ in term_weights(3, c)} for m, c in weights.items()}
    assert kinds == {
        "atom": {"spatial", "channel", "embedding"},
        "atom-channel": {"channel", "embedding"},
        "datadam": {"spatial", "embedding"},
        "dm": {"embedding"},
        "atom-code": {"spatial", "channel", "embedding"},
        "datadam-code": {"spatial", "embedding"},
        "dm-code": {"embedding"},
        "dm-plus": {"embedding"},  # and the calibration, which the step adds (test_pool)
        "atom-plus": {"spatial", "channel", "embedding"},
    }
    layers = {m: sorted({n for n, _ in term_weights(3, c)} - {"embedding"}) for m, c in weights.items()}
    assert layers["atom"] == ["channel0", "channel1", "spatial0", "spatial1"]  # every block but the last
    assert layers["atom-code"] == layers["atom"]  # the published code's ReLUs of blocks 1 and 2
    a, d = weights["atom"], weights["datadam"]
    assert (a.p_spatial, a.p_channel, a.layers, a.scale) == (d.p_spatial, d.p_channel, d.layers, d.scale)
    assert a.embedding == d.embedding == 0.01  # DataDAM's published λ (MNIST's preset: 0.1, test_distill)


def test_config_errors():
    with pytest.raises(AtomddError, match="unknown method"):
        get_method("dc")
    with pytest.raises(AtomddError, match="zero"):
        MatchConfig(spatial=0, channel=0, embedding=0)
    with pytest.raises(AtomddError, match="layers"):
        MatchConfig(layers="first")
    with pytest.raises(AtomddError, match="blocks 0..2"):
        MatchConfig(layers="0,5").layer_indices(3)


def test_the_distance_is_the_published_squared_l2_and_its_registry_is_the_seam(monkeypatch):
    """The loss takes the embedding term's distance from `distances.DISTANCES`, by the name
    `MatchConfig.distance` gives: the default is every published method's squared L2 of the class
    means, and a distance added there is used by the loss and refused nowhere (docs/architecture.md)."""
    from atomdd import distances

    syn, real = [torch.randn(4, 3, 7)], [torch.randn(4, 5, 7)]  # K × n × D samples
    cfg = MatchConfig(spatial=0.0, channel=0.0, embedding=1.0, scale=2.0)
    loss, terms = matching_loss(syn, real, 1, cfg)
    means = (syn[0].mean(1) - real[0].mean(1)).pow(2).sum()  # the means-only loss, as it always was
    assert cfg.distance == "squared-l2" and torch.equal(loss, 2.0 * 1.0 * means)
    valid = "cf, mean-cov, mmd, squared-l2"
    with pytest.raises(AtomddError, match=f"unknown distance 'cosine'; valid distances: {valid}"):
        MatchConfig(distance="cosine")
    monkeypatch.setitem(distances.DISTANCES, "l1", lambda s, r, seed: (s.mean(1) - r.mean(1)).abs().sum())
    loss, _ = matching_loss(syn, real, 1, replace(cfg, distance="l1"))
    assert torch.equal(loss, 2.0 * (syn[0].mean(1) - real[0].mean(1)).abs().sum())


def test_only_the_embedding_term_takes_the_chosen_distance(monkeypatch):
    """`term_distance` decides it in one place: attention terms keep squared L2 of their means."""
    from atomdd import distances
    from atomdd.matching import term_distance

    cfg = replace(get_method("atom").match, distance="mmd")
    assert [term_distance(n, cfg) for n, _ in term_weights(3, cfg)] == ["squared-l2"] * 4 + ["mmd"]
    seen = []
    monkeypatch.setitem(distances.DISTANCES, "mmd", lambda s, r, seed: seen.append(s.shape) or s.sum() * 0)
    stats = [torch.randn(2, 3, d) for d in (5, 6, 5, 6, 9)]
    matching_loss(stats, stats, 3, cfg)
    assert seen == [(2, 3, 9)]  # the embedding's samples only


@pytest.mark.parametrize("name", sorted(__import__("atomdd.distances").distances.DISTANCES))
def test_each_distance_is_zero_for_identical_samples_and_has_a_gradient(name):
    from atomdd.distances import DISTANCES

    g = torch.Generator().manual_seed(0)
    real = torch.randn(3, 8, 16, generator=g)
    same = real.clone().requires_grad_()
    distance = DISTANCES[name]
    assert distance(same, real, 1).item() == pytest.approx(0.0, abs=1e-6)
    syn = torch.randn(3, 4, 16, generator=g).requires_grad_()
    value = distance(syn, real, 1)
    assert value.ndim == 0 and value.item() > 0
    value.backward()
    assert torch.isfinite(syn.grad).all() and syn.grad.abs().sum() > 0


def test_distribution_distances_see_the_spread_that_means_miss():
    """Samples with the class's mean but another spread: squared L2 sees nothing; the covariance,
    the kernel MMD and the characteristic function do. mean-cov's covariance term is DSDM's
    50 · ‖Σ_s − Σ_r‖²_F / D (computed here the direct way, D×D); cf's frequencies come from the seed."""
    from atomdd.distances import DISTANCES

    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 10, 6, generator=g)
    real = torch.cat([base, -base], 1)  # every class centred at 0
    syn = 3 * real[:, ::2]  # centred too (pairs ±x kept), three times the spread
    assert DISTANCES["squared-l2"](syn, real, 0).item() == pytest.approx(0.0, abs=1e-10)
    for name in ("mean-cov", "mmd", "cf"):
        assert DISTANCES[name](syn, real, 0).item() > 1e-3, name

    def cov(x):
        c = x - x.mean(1, keepdim=True)
        return c.transpose(1, 2) @ c / (x.shape[1] - 1)

    direct = 50 * (cov(syn) - cov(real)).pow(2).sum() / 6
    assert DISTANCES["mean-cov"](syn, real, 0).item() == pytest.approx(direct.item(), rel=1e-4)
    cf = DISTANCES["cf"]
    assert torch.equal(cf(syn, real, 5), cf(syn, real, 5))
    assert not torch.equal(cf(syn, real, 5), cf(syn, real, 6))
