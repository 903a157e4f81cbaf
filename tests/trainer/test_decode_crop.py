"""The training crop folded into decoding gives what the plain transform gives, draws alike, and
reduces JPEG decoding only as far as the crop allows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from trainer_testkit import draw_image

from trainer.data import ImageListDataset
from trainer.transforms import build_transform

REAL_JPEGS = Path(__file__).resolve().parents[3] / "shared" / "data" / "hymenoptera_data" / "train" / "bees"


def plain(paths, transform):
    """The same transform on fully decoded images: without a draft size nothing is folded."""
    dataset = ImageListDataset(paths, [0] * len(paths), transform=transform)
    assert dataset._crop is None
    return dataset


def test_folded_crop_matches_the_transform_on_the_decoded_image(tmp_path):
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        path.write_bytes(draw_image("circle", i, size=96))
        paths.append(path)
    transform = build_transform(40, "light", train=True)
    folded = ImageListDataset(paths, [0] * 6, transform=transform, draft_size=40)
    assert folded._crop is not None
    for i in range(6):
        torch.manual_seed(i)
        a, _ = folded[i]
        torch.manual_seed(i)
        b, _ = plain(paths, transform)[i]
        assert a.shape == b.shape == (3, 40, 40) and a.dtype == torch.float32
        # Same crop and flip drawn; PIL's and torchvision's antialiased bilinear differ by rounding.
        assert (a - b).abs().mean() < 0.03, i


def test_eval_and_cached_datasets_keep_the_plain_path():
    assert ImageListDataset([], [], transform=build_transform(32, "light", train=False))._crop is None
    assert ImageListDataset([], [], transform=build_transform(32, "seed", train=True))._crop is None
    assert ImageListDataset([], [], transform=build_transform(32, "light", train=True), cache=True)._crop is None


@pytest.mark.skipif(not REAL_JPEGS.is_dir(), reason="needs ../shared/data/hymenoptera_data")
def test_real_jpegs_decode_reduced_yet_close_to_full_decoding(monkeypatch):
    paths = sorted(REAL_JPEGS.glob("*.jpg"))[:8]
    transform = build_transform(64, "light", train=True)
    sizes = []
    original_resize = Image.Image.resize

    def spy(image, size, *args, **kwargs):
        sizes.append(image.size)
        return original_resize(image, size, *args, **kwargs)

    folded = ImageListDataset(paths, [0] * len(paths), transform=transform, draft_size=64)
    differences = []
    for i, path in enumerate(paths):
        monkeypatch.setattr(Image.Image, "resize", spy)
        torch.manual_seed(i)
        a, _ = folded[i]
        monkeypatch.setattr(Image.Image, "resize", original_resize)
        torch.manual_seed(i)
        b, _ = plain(paths, transform)[i]
        with Image.open(path) as image:
            full = image.size
        # Decoded at a reduced scale whenever the crop allows it, the crop still >= 64 px.
        assert sizes[-1][0] <= full[0]
        differences.append(float((a - b).abs().mean()))
    # The crop is drawn on the full image's size, as on a full decode: only detail differs
    # (measured 0.015-0.10 per image, in normalised units, on these photos).
    assert max(differences) < 0.15 and sum(differences) / len(differences) < 0.07, differences
    assert any(size[0] < full_w for size, full_w in zip(sizes, (Image.open(p).size[0] for p in paths)))
