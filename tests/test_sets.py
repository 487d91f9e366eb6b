"""Factor sets: decoding is the tiles upsampled, the initial layout its inverse, the factor kept in
the set file (files without it read as factor 1), and a factor that does not tile is refused."""

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from atomdd.data.transforms import Preprocess
from atomdd.errors import AtomddError
from atomdd.sets import SyntheticSet, decode, encode, load_synthetic


def test_decoding_equals_upsampling_each_tile():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(3, 2, 8, 8, generator=g), torch.tensor([0, 1, 1])
    decoded, decoded_labels = decode(images, labels, 2)
    expected = [
        F.interpolate(
            images[n : n + 1, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4], size=(8, 8), mode="bilinear"
        )
        for n in range(3)
        for i in range(2)
        for j in range(2)
    ]
    assert torch.equal(decoded, torch.cat(expected))  # each image's tiles, row by row, together
    assert decoded_labels.tolist() == [0] * 4 + [1] * 8
    assert decode(images, labels, 1) == (images, labels)  # factor 1: the stored images themselves


def test_the_initial_layout_tiles_each_image_downscaled():
    """`encode` puts f² images in one, each the means of its f×f blocks, in `decode`'s tile order."""
    g = torch.Generator().manual_seed(1)
    real = torch.randn(8, 3, 8, 8, generator=g)
    stored = encode(real, 2)
    assert stored.shape == (2, 3, 8, 8)
    for n in range(2):
        for t in range(4):
            i, j = divmod(t, 2)
            tile = stored[n, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
            torch.testing.assert_close(tile, F.avg_pool2d(real[4 * n + t], 2))


def test_the_factor_is_kept_in_the_file_and_old_files_read_as_factor_1(tmp_path):
    images, labels, prep = torch.randn(2, 1, 8, 8), torch.tensor([0, 1]), Preprocess((0.5,), (0.25,))
    SyntheticSet(images, labels, "digits", preprocess_meta=prep.meta(), factor=2).save(tmp_path / "f2")
    SyntheticSet(images, labels, "digits", preprocess_meta=prep.meta()).save(tmp_path / "f1")
    back = load_synthetic(tmp_path / "f2")
    assert back.factor == 2 and back.ipc == 1 and len(back.decoded()[1]) == 8
    with safe_open(str(tmp_path / "f1" / "synthetic.safetensors"), framework="pt") as f:
        assert "factor" not in f.metadata()  # a factor-1 file is byte for byte what it always was
    assert load_synthetic(tmp_path / "f1").factor == 1


@pytest.mark.parametrize("factor", [0, 3, True])
def test_a_factor_that_does_not_tile_the_images_is_refused(factor):
    with pytest.raises(AtomddError, match="factor"):
        SyntheticSet(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]), "digits", factor=factor)
