"""The training crop folded into decoding (trainer.decoding): the transform's own crops and flips,
JPEGs decoded at the smallest M/8 scale the crop allows and never below it, other formats and
JPEGs libjpeg-turbo cannot convert through Pillow, and pixels close to a full decode's."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.transforms import v2
from trainer_testkit import draw_image

import trainer.decoding
from trainer.data import ImageListDataset
from trainer.decoding import ResizedCropDecoder, _canvas
from trainer.transforms import IMAGENET_MEAN, IMAGENET_STD, ScaledNormalize, build_transform

REAL_JPEGS = Path(__file__).resolve().parents[3] / "shared" / "data" / "hymenoptera_data" / "train"


def plain(paths, transform):
    """The same transform on fully decoded images: without a draft size nothing is folded."""
    dataset = ImageListDataset(paths, [0] * len(paths), transform=transform)
    assert dataset._decode_crop is None
    return dataset


def folded(paths, transform, size):
    dataset = ImageListDataset(paths, [0] * len(paths), transform=transform, draft_size=size)
    assert dataset._decode_crop is not None and dataset._image_transform is None  # crop and flip folded
    return dataset


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth waves (red across, green down: up to 6-7 levels per pixel, so that a crop in the
    wrong place shows) and a few sharp-edged shapes."""
    x = 128 + 127 * np.sin(2 * np.pi * np.arange(width) / 120)[None, :].repeat(height, 0)
    y = 128 + 127 * np.sin(2 * np.pi * np.arange(height) / 90)[:, None].repeat(width, 1)
    image = Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(seed)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        draw.ellipse((x0, y0, x0 + 40, y0 + 30), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def full_decode_crop(path: Path, params: dict, size: int) -> np.ndarray:
    """Reference: Pillow's full decode, the crop, one antialiased bilinear resize (what the plain
    ``ImageFolder`` + ``T.RandomResizedCrop`` pipeline computes); ``(size, size, 3)`` int."""
    with Image.open(path) as image:
        box = (params["left"], params["top"], params["left"] + params["width"], params["top"] + params["height"])
        return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=box)).astype(int)


@pytest.mark.parametrize("suffix", [".png", ".gif", ".webp"])
def test_other_formats_give_exactly_the_transform_on_the_decoded_image(tmp_path, suffix):
    paths = []
    for i in range(5):
        path = tmp_path / f"{i}{suffix}"
        Image.open(io.BytesIO(draw_image("circle", i, size=96))).save(path, lossless=True)
        paths.append(path)
    transform = build_transform(40, "light", train=True)
    ours, theirs = folded(paths, transform, 40), plain(paths, transform)
    for i in range(5):
        torch.manual_seed(i)
        a, _ = ours.load(i)
        after_ours = torch.get_rng_state()
        torch.manual_seed(i)
        b, _ = theirs.load(i)
        # Same crop and flip drawn from the same RNG, decoded in full: the same uint8 pixels.
        assert torch.equal(torch.get_rng_state(), after_ours)
        assert a.shape == (3, 40, 40) and a.dtype == torch.uint8 and torch.equal(a, b), i
        x, _ = ours[i]
        assert x.shape == (3, 40, 40) and x.dtype == torch.float32


def test_jpegs_decode_at_the_smallest_eighth_scale_that_keeps_the_crop(tmp_path, monkeypatch):
    path = save(photo(480, 360), tmp_path / "photo.jpg", quality=92)
    size = 96
    crop = v2.RandomResizedCrop([size, size], scale=(0.5, 1.0), antialias=True)
    decoder = ResizedCropDecoder(crop)
    decoded = []
    real_decode = trainer.decoding.simplejpeg.decode_jpeg

    def spy(*args, **kwargs):
        array = real_decode(*args, **kwargs)
        decoded.append(array.shape)
        return array

    monkeypatch.setattr(trainer.decoding.simplejpeg, "decode_jpeg", spy)
    eighths, differences, off_by_8 = set(), [], []
    for seed in range(40):
        torch.manual_seed(seed)
        params = crop.make_params([_canvas(360, 480)])
        torch.manual_seed(seed)
        image = decoder(path)
        assert image.shape == (3, size, size) and image.dtype == torch.uint8
        h, w = decoded[-1][:2]
        m = round(8 * w / 480)
        assert (h, w) == scaled(m)  # libjpeg-turbo's M/8 sizes
        eighths.add(m)
        # Never below what the crop needs: the crop covers at least the output size there
        # (or the image is decoded in full)...
        assert m == 8 or (params["width"] * w / 480 >= size and params["height"] * h / 360 >= size)
        # ...and the next smaller scale would not have.
        smaller_h, smaller_w = scaled(m - 1)
        assert m == 1 or params["width"] * smaller_w / 480 < size or params["height"] * smaller_h / 360 < size
        pixels = image.permute(1, 2, 0).numpy().astype(int)
        differences.append(np.abs(pixels - full_decode_crop(path, params, size)).mean())
        off = dict(params, left=params["left"] + 8 if params["left"] + params["width"] + 8 <= 480 else params["left"] - 8)
        off_by_8.append(np.abs(pixels - full_decode_crop(path, off, size)).mean())
    # Scales Pillow's draft lacks (1/2, 1/4, 1/8 only) are used: a 0.36-0.5 crop decodes at 3/8.
    assert eighths - {1, 2, 4, 8}, eighths
    # The crop's content is the full decode's, in the same place: within 4 of 255 levels on
    # average per image (measured 1.2-3.3: edges rounded to the decoded scale's pixels, DCT
    # scaling's filter); the same crop 8 px off is 11.7-15.2 away.
    assert max(differences) < 4 < min(off_by_8), (differences, off_by_8)


def scaled(m: int) -> tuple[int, int]:
    """``(height, width)`` of the 480 x 360 test photo decoded at scale m/8 (rounded up)."""
    return -(-360 * m // 8), -(-480 * m // 8)


def test_grey_and_progressive_jpegs_decode_to_rgb(tmp_path):
    grey = save(photo(300, 200).convert("L"), tmp_path / "grey.jpg")
    progressive = save(photo(300, 200), tmp_path / "progressive.jpg", progressive=True)
    transform = build_transform(64, "light", train=True)
    ours, theirs = folded([grey, progressive], transform, 64), plain([grey, progressive], transform)
    for i in range(2):
        torch.manual_seed(i)
        a, _ = ours.load(i)
        torch.manual_seed(i)
        b, _ = theirs.load(i)
        assert a.shape == b.shape == (3, 64, 64) and a.dtype == torch.uint8
        # The same crop as the full decode's (a misplaced one is 10+ levels off on these waves).
        assert (a.int() - b.int()).abs().float().mean() < 8
        if i == 0:
            assert torch.equal(a[0], a[1]) and torch.equal(a[1], a[2])  # grey in every channel


def test_cmyk_jpegs_go_through_pillow_and_damaged_files_fail_as_in_pillow(tmp_path):
    cmyk = save(photo(200, 150).convert("CMYK"), tmp_path / "cmyk.jpg")
    transform = build_transform(48, "light", train=True)
    torch.manual_seed(0)
    a, _ = folded([cmyk], transform, 48).load(0)
    torch.manual_seed(0)
    b, _ = plain([cmyk], transform).load(0)
    assert a.shape == (3, 48, 48) and (a.int() - b.int()).abs().float().mean() < 8

    good = save(photo(200, 150), tmp_path / "good.jpg").read_bytes()
    for name, data in {"cut_header.jpg": good[:300], "cut_scan.jpg": good[: len(good) // 2]}.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(OSError):
            plain([path], transform).load(0)
        with pytest.raises(OSError):
            folded([path], transform, 48).load(0)


def test_eval_and_cached_datasets_keep_the_plain_path():
    assert ImageListDataset([], [], transform=build_transform(32, "light", train=False))._decode_crop is None
    assert ImageListDataset([], [], transform=build_transform(32, "seed", train=True))._decode_crop is None
    assert ImageListDataset([], [], transform=build_transform(32, "light", train=True), cache=True)._decode_crop is None


def test_scaled_normalize_is_todtype_then_normalize():
    steps = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    fused = ScaledNormalize(IMAGENET_MEAN, IMAGENET_STD)
    batch = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    assert fused(batch).dtype == torch.float32
    assert torch.allclose(fused(batch), steps(batch), atol=1e-6)
    assert torch.equal(fused(batch[1]), fused(batch)[1])  # one image as in a batch
    floats = torch.rand(3, 8, 8)
    assert torch.equal(fused(floats), steps(floats))  # not uint8: the two steps themselves


@pytest.mark.skipif(not REAL_JPEGS.is_dir(), reason="needs ../shared/data/hymenoptera_data")
def test_real_photos_stay_close_to_full_decoding():
    """The figure in trainer/decoding.py's docstring: mean absolute difference against Pillow's
    full decode + crop + resize, 0-255 levels, at 128 px."""
    paths = sorted(REAL_JPEGS.glob("*/*.jpg"))[::6]
    crop = v2.RandomResizedCrop([128, 128], scale=(0.5, 1.0), antialias=True)
    decoder = ResizedCropDecoder(crop)
    differences = []
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            full_w, full_h = image.size
        torch.manual_seed(i)
        params = crop.make_params([_canvas(full_h, full_w)])
        torch.manual_seed(i)
        ours = decoder(path).permute(1, 2, 0).numpy().astype(int)
        differences.append(np.abs(ours - full_decode_crop(path, params, 128)).mean())
    # Measured on all 243 training photos: 3.5 on average, 11.1 at most (the PIL draft path
    # before: 1.7; torchvision's tensor resize of the full decode: 0.03). For scale: the full
    # decode's own crop moved by one pixel is 3.75 away on average.
    assert np.mean(differences) < 4.5 and max(differences) < 14, differences
