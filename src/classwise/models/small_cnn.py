"""A 4-layer CNN (two conv blocks, two linear layers) for 28x28 and 32x32 images."""

from torch import nn


class SmallCNN(nn.Module):
    """conv32-conv32-pool-conv64-conv64-pool, then fc256-fc(num_classes); any image size >= 8.

    The classifier sees the whole (image_size // 4)^2 feature map: averaging it down loses the
    spatial detail a 28x28 image has, and test accuracy with it (docs/runs.md).
    """

    min_image_size = 8

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, hidden: int = 256, image_size: int = 28):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(in_channels, width), block(width, 2 * width))
        side = max(1, image_size // 4)
        self.pool = nn.AdaptiveAvgPool2d(side)  # identity at the sizes it was built for
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * side * side, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))
