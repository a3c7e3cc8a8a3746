"""CIFAR-style ResNet-18 and PreAct ResNet-18 (3x3 stem, no max-pool), after He et al. 2016."""

import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class _ResNet(nn.Module):
    min_image_size = 8

    def __init__(self, block: type[nn.Module], layers: list[int], in_channels: int, num_classes: int, preact: bool):
        super().__init__()
        self.preact = preact
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        stages, cin = [], 64
        for i, n in enumerate(layers):
            cout = 64 * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.bn1 = nn.BatchNorm2d(cin if preact else 64)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        if self.preact:  # pre-activation: BN + ReLU after the last block, none after the stem
            out = F.relu(self.bn1(self.layers(out)))
        else:
            out = self.layers(F.relu(self.bn1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class ResNet18(_ResNet):
    """ResNet-18 with a 3x3 stride-1 stem for 32x32 images (the usual CIFAR-10 variant)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__(BasicBlock, [2, 2, 2, 2], in_channels, num_classes, preact=False)


class PreActResNet18(_ResNet):
    """PreAct ResNet-18 (He et al. 2016b), the usual backbone of backdoor and robustness papers."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__(PreActBlock, [2, 2, 2, 2], in_channels, num_classes, preact=True)
