"""Decoding an image file straight to a random resized crop of it (the training crop folded into
decoding).

torchvision's ``RandomResizedCrop`` decodes the whole image, then crops and resizes it. Here the
crop is drawn first, from the size in the image's header, and the image is decoded at the
smallest scale that still leaves the crop at least the output size: JPEGs through libjpeg-turbo's
DCT scaling (``simplejpeg``), which offers every factor M/8 (a crop that needs 0.6 of full scale
is decoded at 5/8, where Pillow's ``draft`` has only 1/2, 1/4 and 1/8 and would decode in full);
other formats, and JPEGs libjpeg-turbo cannot turn into RGB (CMYK) or refuses, through Pillow.
The crop is then cut from the decoded array, its edges rounded to that scale's pixels (at most
half a pixel there), and resized by torch's antialiased bilinear interpolation, the resize
torchvision's ``RandomResizedCrop`` runs on a tensor, on the ``(H, W, 3)`` array as decoded
(a channels-last view, no copy). The crops follow the transform's own ``make_params`` (the same
distribution and RNG draws), and no image is decoded below the size its crop needs, so the
resize never enlarges where the full decode would not.

Measured on hymenoptera's training photos (about 500x375, 4:4:4, 110 kB) at 128 px, one core:
the crops decode at 3/8 (29 %) or 4/8 (65 %), 1.2 ms a photo, of which 0.95 ms is entropy
decoding that no scale shortens (Pillow's full decode: 1.6 ms); torch's resize of the crop takes
90 us against Pillow's 195. Against Pillow's full decode + the same crop + resize, the crops
differ by 3.5 levels of 255 on average (the full decode's own crop moved by one pixel: 3.75),
of which the edge rounding makes about 1 (Pillow's resize with a fractional box: 2.5; the former
PIL ``draft`` path: 1.7). libjpeg-turbo's ``fastdct``/``fastupsample`` are not used: the reduced
IDCTs ignore the DCT method and 4:4:4 photos need no upsampling (1.220 against 1.222 ms, 2.54
against 2.53 levels).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from PIL import Image
from torch.nn.functional import interpolate
from torchvision.transforms import v2

#: The bytes every JPEG file starts with (SOI marker, then the next marker's 0xFF).
_JPEG_MAGIC = b"\xff\xd8\xff"
#: JPEG colour spaces that libjpeg-turbo cannot convert to RGB; Pillow decodes those.
_NOT_RGB = frozenset({"CMYK", "YCCK"})


def _canvas(height: int, width: int) -> torch.Tensor:
    """A stand-in for an image of ``height`` x ``width`` pixels in ``make_params`` (its
    ``query_size`` reads ``shape[-2:]``): zero strides, so nothing of that size is allocated."""
    return torch.empty(1, dtype=torch.uint8).expand(3, height, width)


class ResizedCropDecoder:
    """Callable: image file path -> its random resized crop, ``(3, h, w)`` uint8 RGB, ``(h, w)``
    being ``crop.size``.

    Args:
        crop: the training crop (bilinear, antialiased); its ``make_params`` draws each crop, so
            the crops follow its scale and ratio ranges and the global torch RNG as it would.
        flip: an optional ``RandomHorizontalFlip``, done on the small crop (with probability
            ``flip.p``, drawn with ``torch.rand(1)`` as the transform itself draws it).

    Raises:
        PIL.UnidentifiedImageError, OSError: the file is not an image Pillow can read (a JPEG
            that libjpeg-turbo refuses is handed to Pillow, which decides).
    """

    def __init__(self, crop: v2.RandomResizedCrop, flip: v2.RandomHorizontalFlip | None = None) -> None:
        self.crop = crop
        self.flip = flip

    def __call__(self, path: str | Path) -> torch.Tensor:
        # Unbuffered: one read of the whole file (Path.read_bytes reads through a buffer in
        # chunks; 10 us against 50 per 110 kB photo).
        with open(path, "rb", buffering=0) as file:
            data = file.read()
        decoded = self._decode_jpeg(data) if data[:3] == _JPEG_MAGIC else None
        array, params, (full_h, full_w) = decoded or self._decode_pil(data)
        h, w = array.shape[:2]
        fy, fx = h / full_h, w / full_w
        top, left = round(params["top"] * fy), round(params["left"] * fx)
        bottom = min(max(round((params["top"] + params["height"]) * fy), top + 1), h)
        right = min(max(round((params["left"] + params["width"]) * fx), left + 1), w)
        region = torch.from_numpy(array).permute(2, 0, 1)[None, :, top:bottom, left:right]
        image = interpolate(region, size=self.crop.size, mode="bilinear", antialias=True, align_corners=False)[0]
        if self.flip is not None and torch.rand(1) < self.flip.p:
            image = image.flip(-1)
        return image

    def _draw(self, height: int, width: int, params: dict | None = None) -> tuple[dict, int, int]:
        """``(params, min_height, min_width)``: a crop of a ``height`` x ``width`` image (drawn
        unless given), and the least decoded size that keeps it at least the output size (capped
        at full size: a crop smaller than the output is enlarged, as on a full decode)."""
        if params is None:
            params = self.crop.make_params([_canvas(height, width)])
        out_h, out_w = self.crop.size
        return (
            params,
            min(height, math.ceil(out_h * height / params["height"])),
            min(width, math.ceil(out_w * width / params["width"])),
        )

    def _decode_jpeg(self, data: bytes) -> tuple[np.ndarray, dict, tuple[int, int]] | None:
        """``(array, params, full size)`` for JPEG ``data`` through libjpeg-turbo; ``None``
        when it cannot read the header."""
        try:
            full_h, full_w, colorspace, _subsampling = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            return None
        if colorspace in _NOT_RGB:
            return None
        params, min_h, min_w = self._draw(full_h, full_w)
        try:
            # libjpeg-turbo picks the smallest M/8 scale whose output is at least min_h x min_w.
            array = simplejpeg.decode_jpeg(data, "RGB", min_height=min_h, min_width=min_w)
        except ValueError:  # damaged data: Pillow decides, with the crop already drawn
            return self._decode_pil(data, params)
        return array, params, (full_h, full_w)

    def _decode_pil(self, data: bytes, params: dict | None = None) -> tuple[np.ndarray, dict, tuple[int, int]]:
        """``(array, params, full size)`` through Pillow: JPEGs at PIL ``draft``'s 1/2, 1/4,
        1/8 scales, other formats at full size; ``params``, when already drawn, are kept."""
        with Image.open(io.BytesIO(data)) as image:
            full_w, full_h = image.size
            params, min_h, min_w = self._draw(full_h, full_w, params)
            image.draft("RGB", (min_w, min_h))
            array = np.array(image.convert("RGB") if image.mode != "RGB" else image)
        return array, params, (full_h, full_w)
