"""Image transforms (torchvision.transforms.v2): augmentation presets and normalisation."""

from __future__ import annotations

import math

import torch
from torchvision.transforms import v2

#: ImageNet channel mean and std, the statistics torchvision's ImageNet weights were trained with
#: (``torchvision.transforms._presets.ImageClassification`` defaults).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AUGMENTATIONS = ("none", "light", "seed")


def build_transform(image_size: int, augment: str = "none", *, train: bool = False) -> v2.Compose:
    """Transform for one PIL image: RGB PIL in, ``(3, image_size, image_size)`` float out, normalised.

    Presets (applied only when ``train`` is true; evaluation always just resizes):

    - ``none``: resize to ``image_size`` x ``image_size`` pixels.
    - ``light``: ``RandomResizedCrop(image_size, scale=(0.5, 1))`` + horizontal flip.
    - ``seed``: the seeds' Keras ``ImageDataGenerator(rotation_range=40, width_shift_range=0.2,
      height_shift_range=0.2, shear_range=0.2, zoom_range=0.2, horizontal_flip=True)``, as one
      ``RandomAffine``: rotation +-40 degrees, shift 20 % of each side, shear 0.2 rad (Keras
      before 2.2.4 read ``shear_range`` in radians; about 11.5 degrees), zoom 0.8-1.2, then a
      horizontal flip. Keras filled uncovered pixels with the nearest edge; torchvision fills
      with black (0).

    Normalisation uses ``IMAGENET_MEAN``/``IMAGENET_STD``, the backbones' own statistics.

    Raises:
        ValueError: unknown ``augment`` name.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(AUGMENTATIONS)}")
    size = [image_size, image_size]
    steps: list = [v2.ToImage()]
    if train and augment == "light":
        steps += [v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps += [v2.Resize(size, antialias=True)]
        if train and augment == "seed":
            steps += [
                v2.RandomAffine(
                    degrees=40,
                    translate=(0.2, 0.2),
                    scale=(0.8, 1.2),
                    shear=math.degrees(0.2),
                ),
                v2.RandomHorizontalFlip(),
            ]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)
