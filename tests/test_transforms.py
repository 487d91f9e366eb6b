"""Normalisation and ZCA: invertible, faithful to the published (kornia) ZCA, and saved losslessly."""

from __future__ import annotations

import json
from pathlib import Path

import kornia
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file

from atomdd.data import transforms
from atomdd.data.transforms import ZCA, Normalize, Preprocess
from atomdd.errors import AtomddError

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def smooth_images(n: int, seed: int = 0, size: int = 8) -> torch.Tensor:
    """uint8 images whose neighbouring pixels correlate strongly, as in natural images (full rank)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 2, size // 2, generator=g)
    x = 0.6 * F.interpolate(low, size=size, mode="bilinear", align_corners=False)
    x += 0.4 * torch.rand(n, 3, size, size, generator=g)
    return (x * 255).round().to(torch.uint8)


def off_diagonal_ratio(x: torch.Tensor) -> float:
    cov = torch.cov(x.reshape(len(x), -1).double().T)
    return ((cov - torch.diag(cov.diag())).norm() / cov.diag().norm()).item()


def test_normalize_inverse() -> None:
    x = torch.rand(4, 3, 5, 5)
    norm = Normalize(MEAN, STD)
    y = norm(x)
    assert y[:, 1].mean().item() == pytest.approx(((x[:, 1] - MEAN[1]) / STD[1]).mean().item(), abs=1e-6)
    torch.testing.assert_close(norm.inverse(y), x, atol=1e-6, rtol=0)
    with pytest.raises(AtomddError, match="channels"):
        norm(torch.rand(2, 1, 5, 5))
    with pytest.raises(AtomddError, match="positive std"):
        Normalize((0.5,), (0.0,))


def test_zca_matches_kornia_protocol() -> None:
    x = Normalize(MEAN, STD)(smooth_images(300).float() / 255)
    ours = ZCA(eps=0.1).fit([x])
    ref = kornia.enhance.ZCAWhitening(eps=0.1, compute_inv=True).fit(x)
    torch.testing.assert_close(ours(x), ref(x), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(
        ref.inverse_transform(ref(x)), x, atol=1e-4, rtol=0
    )  # kornia's inverse is sound
    torch.testing.assert_close(ours.inverse(ours(x)), ref.inverse_transform(ref(x)), atol=2e-4, rtol=0)


def test_zca_chunked_fit_equals_one_pass() -> None:
    x = torch.randn(250, 48) @ torch.randn(48, 48) + 3.0  # correlated, far from zero mean
    one = ZCA().fit([x])
    chunked = ZCA().fit(x.split(37))
    torch.testing.assert_close(chunked.mean, one.mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked(x), one(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(AtomddError, match="at least 2"):
        ZCA().fit([x[:1]])


def test_preprocess_zca_inverts_and_whitens() -> None:
    train = smooth_images(600)
    prep = Preprocess(MEAN, STD, zca=True).fit(train)
    y = prep(train)
    assert y.dtype == torch.float32 and y.shape == train.shape
    unit = train.float() / 255
    torch.testing.assert_close(prep.inverse(y, clamp=False), unit, atol=1e-4, rtol=0)
    torch.testing.assert_close(prep.inverse(y), unit, atol=1e-4, rtol=0)
    before, after = off_diagonal_ratio(Normalize(MEAN, STD)(unit)), off_diagonal_ratio(y)
    assert after < 0.25 * before, (before, after)
    torch.testing.assert_close(prep(unit), y)  # uint8 and [0, 1] float input agree


def test_preprocess_without_zca() -> None:
    x = smooth_images(5)
    prep = Preprocess(MEAN, STD).fit(x)
    assert prep.tensors() == {} and prep.meta()["zca"] is False
    torch.testing.assert_close(prep.inverse(prep(x)), x.float() / 255, atol=1e-6, rtol=0)
    again = Preprocess.from_state({}, json.loads(json.dumps(prep.meta())))
    assert torch.equal(again(x), prep(x))


def test_preprocess_state_round_trip_through_safetensors(tmp_path: Path) -> None:
    train, test = smooth_images(400), smooth_images(20, seed=1)
    prep = Preprocess(MEAN, STD, zca=True, zca_eps=0.1).fit(train)
    file = tmp_path / "prep.safetensors"
    save_file(prep.tensors(), str(file), metadata={"preprocess": json.dumps(prep.meta())})
    with safe_open(str(file), framework="pt") as f:
        meta = json.loads(f.metadata()["preprocess"])
    loaded = Preprocess.from_state(load_file(str(file)), meta)
    assert torch.equal(loaded(test), prep(test))
    y = prep(test)
    assert torch.equal(loaded.inverse(y), prep.inverse(y))
    assert meta == {"mean": list(MEAN), "std": list(STD), "zca": True, "zca_eps": 0.1}


def test_from_state_errors() -> None:
    with pytest.raises(AtomddError, match="lacks 'zca_eigvecs'"):
        Preprocess.from_state({"zca_mean": torch.zeros(3)}, {"mean": [0.5], "std": [0.5], "zca": True})
    with pytest.raises(AtomddError, match="lacks 'std'"):
        Preprocess.from_state({}, {"mean": [0.5], "zca": False})
    with pytest.raises(AtomddError, match="inconsistent"):
        ZCA().load(torch.zeros(4), torch.zeros(3, 3), torch.zeros(3))


def test_preprocess_blocks_large_inputs_and_keeps_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    train = smooth_images(50)
    prep = Preprocess(MEAN, STD, zca=True).fit(train)
    whole = prep(train)
    monkeypatch.setattr(transforms, "_CHUNK", 7)
    # Blocks change only the matmul's summation order (BLAS picks its kernel by the row count, and
    # that choice differs between CPU kinds). Each output is a float32 dot of D terms, so two orders
    # differ by at most 2·D·u·(|x| @ |W|) (the classic bound, u = 2⁻²⁴): a bound, not a guess.
    centred = (prep.normalize(transforms.to_unit(train)).reshape(len(train), -1) - prep.zca.mean).abs()
    _, matrix, _ = prep.zca._matrices(train)
    bound = 2 * centred.shape[1] * 2.0**-24 * (centred @ matrix.abs())
    assert ((prep(train) - whole).reshape(bound.shape).abs() <= bound).all()
    assert torch.equal(
        Preprocess(MEAN, STD, zca=True).fit(train).tensors()["zca_mean"], prep.tensors()["zca_mean"]
    )

    syn = torch.rand(9, 3, 8, 8, requires_grad=True)
    prep(syn).square().sum().backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0


def test_zca_rejects_other_image_sizes() -> None:
    prep = Preprocess(MEAN, STD, zca=True).fit(smooth_images(30))
    with pytest.raises(AtomddError, match="fitted on images of 192 values, got 768"):
        prep(smooth_images(3, size=16))
