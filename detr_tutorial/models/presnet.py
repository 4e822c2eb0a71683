"""PResNet "vd": the trunk of RT-DETR (``rtdetr_pytorch/src/nn/backbone/presnet.py``).

The "vd" ResNet (He et al., "Bag of Tricks", 2019) differs from torchvision's in two places:

* the stem is three 3x3 convolutions (``conv1.conv1_1`` stride 2, ``conv1_2``, ``conv1_3``)
  instead of one 7x7, then the usual 3x3 stride-2 max pool (stride 4);
* a stage's first block shortcut, where it halves the map, is ``AvgPool2d(2, 2, ceil_mode=True)``
  followed by a 1x1 convolution (``short.pool``, ``short.conv``), so no input pixel is skipped
  (torchvision's shortcut is a 1x1 convolution of stride 2, which reads one pixel in four).

Every convolution is a :class:`ConvNormLayer` (``.conv`` without bias, ``.norm``, an optional
activation), as the official code names them, so official checkpoints load key for key.
Depths 18/34 use :class:`BasicBlock` (``branch2a``, ``branch2b``), 50/101 :class:`BottleNeck`
(``branch2a/b/c``, stride on the 3x3 as in variant "b"/"d"). :meth:`PResNet.stages` returns the
stride 8, 16 and 32 maps (``res_layers.1..3``: ``return_idx=[1, 2, 3]``), as RT-DETR uses them.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

from torch import Tensor, nn
import torch.nn.functional as F
from torchvision.ops.misc import FrozenBatchNorm2d

from .backbone import mask_to_feature_size

__all__ = ["ConvNormLayer", "BasicBlock", "BottleNeck", "PResNet", "PRESNET_DEPTHS", "PRESNET_IMAGENET_URLS"]

#: blocks per stage
PRESNET_DEPTHS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}

#: the official ImageNet weights (converted from PaddlePaddle by the RT-DETR authors)
PRESNET_IMAGENET_URLS = {
    18: "https://github.com/lyuwenyu/storage/releases/download/v0.1/ResNet18_vd_pretrained_from_paddle.pth",
    34: "https://github.com/lyuwenyu/storage/releases/download/v0.1/ResNet34_vd_pretrained_from_paddle.pth",
    50: "https://github.com/lyuwenyu/storage/releases/download/v0.1/ResNet50_vd_ssld_v2_pretrained_from_paddle.pth",
    101: "https://github.com/lyuwenyu/storage/releases/download/v0.1/ResNet101_vd_ssld_pretrained_from_paddle.pth",
}


class ConvNormLayer(nn.Sequential):
    """``conv`` (k x k, no bias, padding ``(k - 1) // 2``) -> ``norm`` -> ``act`` (ReLU or none).

    ``[B, C_in, H, W]`` -> ``[B, C_out, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, ch_in: int, ch_out: int, kernel_size: int, stride: int, act: bool = False,
                 norm: type = nn.BatchNorm2d) -> None:
        super().__init__(OrderedDict(
            conv=nn.Conv2d(ch_in, ch_out, kernel_size, stride, padding=(kernel_size - 1) // 2, bias=False),
            norm=norm(ch_out),
            act=nn.ReLU(inplace=True) if act else nn.Identity(),
        ))


def _shortcut(ch_in: int, ch_out: int, stride: int, norm: type) -> nn.Module:
    """The "d" shortcut: average pool then 1x1 conv where the block halves the map, else 1x1 conv."""
    if stride == 2:
        return nn.Sequential(OrderedDict(pool=nn.AvgPool2d(2, 2, 0, ceil_mode=True),
                                         conv=ConvNormLayer(ch_in, ch_out, 1, 1, norm=norm)))
    return ConvNormLayer(ch_in, ch_out, 1, stride, norm=norm)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus the shortcut, then ReLU (ResNet-18/34)."""

    expansion = 1

    def __init__(self, ch_in: int, ch_out: int, stride: int, shortcut: bool, norm: type = nn.BatchNorm2d) -> None:
        super().__init__()
        self.shortcut = shortcut
        if not shortcut:
            self.short = _shortcut(ch_in, ch_out, stride, norm)
        self.branch2a = ConvNormLayer(ch_in, ch_out, 3, stride, act=True, norm=norm)
        self.branch2b = ConvNormLayer(ch_out, ch_out, 3, 1, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch2b(self.branch2a(x))
        return F.relu(out + (x if self.shortcut else self.short(x)))


class BottleNeck(nn.Module):
    """1x1 (reduce), 3x3 (stride), 1x1 (expand x4) plus the shortcut, then ReLU (ResNet-50/101)."""

    expansion = 4

    def __init__(self, ch_in: int, ch_out: int, stride: int, shortcut: bool, norm: type = nn.BatchNorm2d) -> None:
        super().__init__()
        self.branch2a = ConvNormLayer(ch_in, ch_out, 1, 1, act=True, norm=norm)
        self.branch2b = ConvNormLayer(ch_out, ch_out, 3, stride, act=True, norm=norm)
        self.branch2c = ConvNormLayer(ch_out, ch_out * self.expansion, 1, 1, norm=norm)
        self.shortcut = shortcut
        if not shortcut:
            self.short = _shortcut(ch_in, ch_out * self.expansion, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch2c(self.branch2b(self.branch2a(x)))
        return F.relu(out + (x if self.shortcut else self.short(x)))


class Blocks(nn.Module):
    """One stage: ``count`` blocks, the first one changing width (and stride, but in stage 2)."""

    def __init__(self, block: type, ch_in: int, ch_out: int, count: int, stage_num: int, norm: type) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for i in range(count):
            stride = 2 if i == 0 and stage_num != 2 else 1
            self.blocks.append(block(ch_in, ch_out, stride, shortcut=i != 0, norm=norm))
            ch_in = ch_out * block.expansion

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class PResNet(nn.Module):
    """ResNet-vd ``depth`` (18, 34, 50, 101), the official ``PResNet(depth, variant="d")``.

    Args:
        depth: 18, 34, 50 or 101.
        norm: ``"bn"`` (``nn.BatchNorm2d``, ``freeze_norm=False``) or ``"frozen_bn"``
            (``FrozenBatchNorm2d``, the official default for pretrained trunks).
        freeze_stem: no gradients for ``conv1`` (the official ``freeze_at=0``).

    Attributes ``stage_channels`` (``[128, 256, 512]`` for 18/34, ``[512, 1024, 2048]`` for 50/101),
    ``stage_strides`` ``[8, 16, 32]`` and ``num_channels`` (the last) describe :meth:`stages`.
    """

    def __init__(self, depth: int = 50, norm: str = "bn", freeze_stem: bool = False) -> None:
        super().__init__()
        if depth not in PRESNET_DEPTHS:
            raise ValueError(f"PResNet depth must be one of {sorted(PRESNET_DEPTHS)}, got {depth}")
        if norm not in ("bn", "frozen_bn"):
            raise ValueError(f"norm must be 'bn' or 'frozen_bn', got {norm!r}")
        norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
        self.depth = depth
        self.conv1 = nn.Sequential(OrderedDict(
            conv1_1=ConvNormLayer(3, 32, 3, 2, act=True, norm=norm_layer),
            conv1_2=ConvNormLayer(32, 32, 3, 1, act=True, norm=norm_layer),
            conv1_3=ConvNormLayer(32, 64, 3, 1, act=True, norm=norm_layer),
        ))
        block = BottleNeck if depth >= 50 else BasicBlock
        widths = [64, 128, 256, 512]
        ch_in = 64
        self.res_layers = nn.ModuleList()
        for i, (count, width) in enumerate(zip(PRESNET_DEPTHS[depth], widths)):
            self.res_layers.append(Blocks(block, ch_in, width, count, i + 2, norm_layer))
            ch_in = width * block.expansion
        self.stage_channels = [w * block.expansion for w in widths[1:]]
        self.stage_strides = [8, 16, 32]
        self.num_channels = self.stage_channels[-1]
        if freeze_stem:
            self.conv1.requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x [B, 3, H, W]`` (RGB in [0, 1]) -> the stride 8, 16, 32 maps ``[B, C_l, H/s, W/s]``."""
        x = F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)  # stride 4
        outs = []
        for idx, stage in enumerate(self.res_layers):
            x = stage(x)
            if idx >= 1:
                outs.append(x)
        return outs

    def stages(self, images: Tensor, mask: Optional[Tensor] = None) -> list[tuple[Tensor, Optional[Tensor]]]:
        """The package's multi-scale trunk API: ``[(features, mask at that size or None), ...]``."""
        return [(f, None if mask is None else mask_to_feature_size(mask, f.shape[-2:])) for f in self(images)]


def build_presnet(name: str, weights: Optional[str] = None, norm: str = "bn", train_backbone: bool = True,
                  freeze_stem: bool = False) -> PResNet:
    """``presnet18`` .. ``presnet101``; ``weights``: ``True``/``"imagenet"`` downloads the official
    ImageNet weights (``torch.hub``, cached), a path reads a local state dict."""
    depth = int(name[len("presnet"):])
    trunk = PResNet(depth, norm=norm, freeze_stem=freeze_stem)
    if weights not in (None, False):
        import torch

        if weights is True or weights == "imagenet":
            state = torch.hub.load_state_dict_from_url(PRESNET_IMAGENET_URLS[depth], map_location="cpu")
        else:
            from ..weights_io import read_weights_file

            state = read_weights_file(weights, "cpu", what="PResNet weights")
        trunk.load_state_dict(state, strict=True)  # FrozenBatchNorm2d drops num_batches_tracked itself
    if not train_backbone:
        trunk.requires_grad_(False)
    return trunk
