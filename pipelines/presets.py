"""Architecture presets a run trains on its dataset: ``mlp``, ``vgg-small``, ``resnet-small``.

Each is sized to the data (input channels, classes, input side) and small enough to train on
a CPU in seconds on digits. They are shaped so that every part of LayerScope has something to
show: the ``mlp`` has no spatial layer (no Grad-CAM: the model stage says explanations are
skipped), ``vgg-small`` is a plain conv stack, ``resnet-small`` has residual additions (a
non-sequential graph, its skip connections drawn by the architecture view). Layers are
separate modules, never reused within one forward, so each has one output for the hooks.
"""

from __future__ import annotations

import torch
from torch import nn

PRESETS = ("mlp", "vgg-small", "resnet-small")
DESCRIPTIONS = {
    "mlp": "MLP (3 fully connected layers), trained on this dataset",
    "vgg-small": "small VGG-style CNN (3 conv stages + 2 dense layers), trained on this dataset",
    "resnet-small": "small ResNet-style CNN (stem + 3 residual blocks), trained on this dataset",
}
# Inputs are this side unless the dataset's images are larger (then PHOTO_INPUT_SIZE): digits
# are 8x8 up-sampled, mnist 28, cifar10 32; Imagenette's 160 px shrink to 64 so a preset still
# trains on a CPU.
SMALL_INPUT_SIZE = 32
PHOTO_INPUT_SIZE = 64


def preset_input_size(image_side: int) -> int:
    """The preset's input side for a dataset whose first image's shorter side is ``image_side``."""
    return SMALL_INPUT_SIZE if image_side <= SMALL_INPUT_SIZE else PHOTO_INPUT_SIZE


def mlp(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * input_size * input_size, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


class VGGSmall(nn.Module):
    """Conv-BN-ReLU stacks (one conv, then two, then one; 16, 32, 64 channels), each ending in
    max pooling, like VGG's. About twice smallcnn's work per image (5M multiply-adds at 32 px):
    wider stacks (32-32, 64-64, 128) trained 11x slower on a busy 2-core machine."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int):
        super().__init__()

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *conv(in_channels, 16),
            nn.MaxPool2d(2),
            *conv(16, 32),
            *conv(32, 32),
            nn.MaxPool2d(2),
            *conv(32, 64),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * (input_size // 8) ** 2, 128),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus the input (a 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A stem (conv, then max pooling halving the side, as torchvision's ResNets do) and three
    residual stages (16, 32, 64 channels; the last two halve the side again), global average
    pooling and one dense layer, laid out like torchvision's ResNets. About 3M multiply-adds per
    image at 32 px, near smallcnn's 2.5M."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int):
        super().__init__()
        del input_size  # global pooling: any side works
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 64, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def build_preset(name: str, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    """A fresh preset with the caller's torch seed; ``name`` one of ``PRESETS``."""
    if name == "mlp":
        return mlp(in_channels, num_classes, input_size)
    if name == "vgg-small":
        return VGGSmall(in_channels, num_classes, input_size)
    if name == "resnet-small":
        return ResNetSmall(in_channels, num_classes, input_size)
    raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
