"""The seeds' baseline CNN, the only network in the project written by hand."""

from __future__ import annotations

from torch import Tensor, nn


class BaselineCNN(nn.Module):
    """Three conv -> ReLU -> max-pool blocks, then two dense layers (the seeds' Keras baseline).

    The seeds' model was ``Conv2D(32, 3x3) -> ReLU -> MaxPool(2)`` three times (32, 32, 64
    filters), then ``Flatten -> Dense(64) -> ReLU -> Dropout(0.5) -> Dense(classes)``. Flatten
    tied that model to one input size; here an adaptive average pool to ``pool_size`` x
    ``pool_size`` sits before the flatten, so any image size from 8 pixels up works.

    Args:
        num_classes: number of output logits.
        channels: filters of the three conv blocks.
        hidden: width of the first dense layer.
        dropout: dropout probability before the last dense layer.
        pool_size: side of the pooled feature map (pixels of the feature grid) fed to the dense layers.

    Input ``(N, 3, H, W)`` float, output ``(N, num_classes)`` logits.
    """

    def __init__(
        self,
        num_classes: int,
        channels: tuple[int, int, int] = (32, 32, 64),
        hidden: int = 64,
        dropout: float = 0.5,
        pool_size: int = 4,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels in channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        # Named `classifier` like torchvision's AlexNet/VGG so the head is found the same way.
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * pool_size * pool_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)))
