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
    """The loss takes its distance between class means from `distances.DISTANCES`, by the name
    `MatchConfig.distance` gives: the default is every published method's squared L2, and a
    distance added there is used by the loss and refused nowhere (docs/architecture.md)."""
    from atomdd import distances

    syn, real = [torch.randn(4, 7)], [torch.randn(4, 7)]
    cfg = MatchConfig(spatial=0.0, channel=0.0, embedding=1.0, scale=2.0)
    loss, terms = matching_loss(syn, real, 1, cfg)
    assert cfg.distance == "squared-l2" and torch.equal(loss, 2.0 * 1.0 * (syn[0] - real[0]).pow(2).sum())
    with pytest.raises(AtomddError, match="unknown distance 'cosine'; valid distances: squared-l2"):
        MatchConfig(distance="cosine")
    monkeypatch.setitem(distances.DISTANCES, "l1", lambda s, r: (s - r).abs().sum())
    loss, _ = matching_loss(syn, real, 1, replace(cfg, distance="l1"))
    assert torch.equal(loss, 2.0 * (syn[0] - real[0]).abs().sum())
