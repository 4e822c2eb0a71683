"""The CNN trunk: a torchvision ResNet cut before its pooling and classifier.

DETR uses a ResNet-50 or -101 trained on ImageNet, with its BatchNorm *frozen* (statistics and
affine parameters fixed): detection batches are tiny (2 images per GPU), far too small to estimate
batch statistics. The trunk turns an image ``[B, 3, H, W]`` into a feature map
``[B, C, H/32, W/32]`` (``C`` = 2048 for ResNet-50) and the padding mask is shrunk to the same
size, so later attention knows which feature cells are padding.

A trunk trained *from scratch* must not use frozen BatchNorm: frozen statistics at their initial
values are the identity, so nothing normalizes the activations and they blow up
(``backbone_norm="bn"`` uses ordinary, trainable BatchNorm instead).
"""
from __future__ import annotations

import logging
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["Backbone", "SmallCNN", "FrozenBatchNorm2d", "mask_to_feature_size", "build_backbone"]

logger = logging.getLogger(__name__)

# output channels of layer3 / layer4 for each trunk
_CHANNELS = {
    "resnet18": (256, 512),
    "resnet34": (256, 512),
    "resnet50": (1024, 2048),
    "resnet101": (1024, 2048),
}
# output channels of layer2 (the stride-8 stage that multi-scale models also read)
_LAYER2_CHANNELS = {"resnet18": 128, "resnet34": 128, "resnet50": 512, "resnet101": 512}
_IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",  # the weights the official DETR started from
    "resnet101": "ResNet101_Weights.IMAGENET1K_V1",
}


def mask_to_feature_size(mask: Tensor, size: List[int]) -> Tensor:
    """Shrink a padding mask ``[B, H, W]`` (True = padding) to a feature map's ``(h, w)``.

    Nearest-neighbour resampling, exactly as the official code does it.
    """
    return F.interpolate(mask[None].float(), size=size).to(torch.bool)[0]


class Backbone(nn.Module):
    """ResNet trunk returning the last feature map and its padding mask.

    Args:
        name: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        weights: ``None`` (random init), a torchvision weights name such as
            ``"ResNet50_Weights.IMAGENET1K_V1"`` (downloaded by torchvision), ``"imagenet"`` for the
            official choice, or a path to a local ResNet state dict.
        norm: ``"frozen_bn"`` (pretrained trunks, as in the paper) or ``"bn"`` (trainable).
        train_backbone: whether the trunk's parameters receive gradients at all.
        freeze_stem: freeze ``conv1`` and ``layer1`` (the official code always does, since its trunk
            is pretrained). ``None`` means: freeze them iff ``weights`` is given.
        dilation: replace the stride of the last stage by a dilation (the "DC5" models).
        stride: 32 (the paper) or 16 (stop after ``layer3``: a finer map at a quarter of the cost).
    """

    def __init__(
        self,
        name: str = "resnet50",
        weights: Union[None, str] = None,
        norm: str = "frozen_bn",
        train_backbone: bool = True,
        freeze_stem: Optional[bool] = None,
        dilation: bool = False,
        stride: int = 32,
    ) -> None:
        super().__init__()
        if name not in _CHANNELS:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(_CHANNELS)}")
        if norm not in ("frozen_bn", "bn"):
            raise ValueError(f"norm must be 'frozen_bn' or 'bn', got {norm!r}")
        norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
        tv_weights, local_path = _resolve_weights(name, weights)
        body = getattr(torchvision.models, name)(
            weights=tv_weights,
            replace_stride_with_dilation=[False, False, dilation],
            norm_layer=norm_layer,
        )
        if local_path is not None:
            from ..weights_io import CheckpointError, read_weights_file  # weights_only, one-line errors

            state = read_weights_file(local_path, "cpu", what="backbone weights file")
            if not isinstance(state, dict):
                raise CheckpointError(
                    f"backbone weights file {local_path} holds a {type(state).__name__}, expected a state dict"
                )
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = body.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.") and "num_batches_tracked" not in k]
            if missing or unexpected:
                raise ValueError(
                    f"{local_path} is not a {name} state dict: missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
            logger.info("loaded %s trunk weights from %s", name, local_path)
        pretrained = weights is not None
        if freeze_stem is None:
            freeze_stem = pretrained
        for pname, p in body.named_parameters():
            trainable = train_backbone and (not freeze_stem or pname.startswith(("layer2", "layer3", "layer4")))
            p.requires_grad_(trainable)
        last = "layer4" if stride == 32 else "layer3"
        if stride not in (16, 32):
            raise ValueError(f"stride must be 16 or 32, got {stride}")
        # IntermediateLayerGetter keeps the modules up to `last` and drops avgpool/fc (and layer4 at stride 16)
        return_layers = {last: "0"}
        self.body = IntermediateLayerGetter(body, return_layers=return_layers)
        self.num_channels = _CHANNELS[name][1 if last == "layer4" else 0]
        self.stride = 16 if (dilation or stride == 16) else 32
        # what :meth:`stages` returns: layer2, layer3 (and layer4), as Deformable DETR reads them
        num_stages = 3 if last == "layer4" else 2
        self.stage_channels = [_LAYER2_CHANNELS[name], *_CHANNELS[name]][:num_stages]
        self.stage_strides = [8, 16, 16 if dilation else 32][:num_stages]

    def forward(self, images: Tensor, mask: Tensor) -> List[Tensor]:
        """``images [B, 3, H, W]``, ``mask [B, H, W]`` -> ``[features [B, C, h, w], mask [B, h, w]]``.

        A list, as TorchScript compiles it (``torch.jit.script`` compiles this trunk, as the
        official repository's tests do)."""
        features = self.body(images)["0"]  # [B, C, H/stride, W/stride]
        return [features, mask_to_feature_size(mask, features.shape[-2:])]

    def stages(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The maps of ``layer2``, ``layer3`` (and ``layer4``) with their masks, finest first.

        ``[(features [B, C_l, H/s_l, W/s_l], mask [B, H/s_l, W/s_l]), ...]`` with ``C_l`` in
        ``stage_channels`` and ``s_l`` in ``stage_strides`` (8, 16, 32; 8, 16, 16 with dilation).
        Multi-scale models (Deformable DETR) read these; :meth:`forward` is unchanged.
        """
        out = []
        x = images
        for name, module in self.body.items():
            x = module(x)
            if name in ("layer2", "layer3", "layer4"):
                out.append((x, mask_to_feature_size(mask, x.shape[-2:])))
        return out


class SmallCNN(nn.Module):
    """A small residual CNN trunk for training from scratch on a CPU (the ``shapes-cpu`` recipe).

    A ResNet-18 spends most of a CPU training step in its trunk, and on 128 px images of flat
    shapes its ImageNet-sized capacity buys nothing. This trunk is a 3x3 stem and one torchvision
    ``BasicBlock`` per stage, doubling the channels at each stride-2 stage::

        stem   3 -> 32,  stride 2
        stage1 32 -> 64,  stride 4
        stage2 64 -> 128, stride 8
        stage3 128 -> 256, stride 16

    ``stride=8`` stops after ``stage2`` (128 channels, a 16x16 map for a 128 px image: finer
    boxes for small objects), ``stride=16`` after ``stage3``. Trainable BatchNorm throughout
    (``norm="bn"``): there are no pretrained statistics to freeze.
    """

    WIDTHS = (32, 64, 128, 256)

    def __init__(self, stride: int = 16, norm: str = "bn") -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        if stride not in (8, 16):
            raise ValueError(f"the smallcnn trunk has stride 8 or 16, got {stride}")
        if norm != "bn":
            raise ValueError("the smallcnn trunk is trained from scratch: use backbone_norm='bn'")
        w = self.WIDTHS
        layers: list[nn.Module] = [
            nn.Conv2d(3, w[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w[0]),
            nn.ReLU(inplace=True),
        ]
        num_stages = 2 if stride == 8 else 3
        for c_in, c_out in zip(w[:num_stages], w[1 : num_stages + 1]):
            downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out))
            layers.append(BasicBlock(c_in, c_out, stride=2, downsample=downsample))
        self.body = nn.Sequential(*layers)
        self.num_channels = w[num_stages]
        self.stride = stride
        self.stage_channels = list(w[2 : num_stages + 1])  # what :meth:`stages` returns: strides 8 (and 16)
        self.stage_strides = [8, 16][: num_stages - 1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``images [B, 3, H, W]``, ``mask [B, H, W]`` -> ``features [B, C, h, w]``, ``mask [B, h, w]``."""
        features = self.body(images)  # [B, C, H/stride, W/stride]
        return features, mask_to_feature_size(mask, features.shape[-2:])

    def stages(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The maps of the stride-8 stage (and the stride-16 one) with their masks, finest first:
        ``[(features [B, C_l, H/s_l, W/s_l], mask [B, H/s_l, W/s_l]), ...]`` (``stage_channels``,
        ``stage_strides``), for multi-scale models."""
        out = []
        x = images
        for i, module in enumerate(self.body):
            x = module(x)
            if i >= 4:  # 0-2: the stem, 3: stage1 (stride 4), 4: stage2 (stride 8), 5: stage3 (stride 16)
                out.append((x, mask_to_feature_size(mask, x.shape[-2:])))
        return out


def build_backbone(
    name: str,
    weights: Union[None, str] = None,
    norm: str = "frozen_bn",
    train_backbone: bool = True,
    freeze_stem: Optional[bool] = None,
    dilation: bool = False,
    stride: int = 32,
) -> nn.Module:
    """The trunk a config names: a torchvision ResNet (:class:`Backbone`) or :class:`SmallCNN`."""
    if name == "smallcnn":
        if weights not in (None, False):
            raise ValueError("the smallcnn trunk has no pretrained weights: set pretrained_backbone=False")
        if dilation:
            raise ValueError("dilation (DC5) applies to resnet50/resnet101 only")
        trunk = SmallCNN(stride=stride, norm=norm)
        trunk.requires_grad_(train_backbone)
        return trunk
    return Backbone(
        name, weights=weights, norm=norm, train_backbone=train_backbone, freeze_stem=freeze_stem,
        dilation=dilation, stride=stride,
    )


def _resolve_weights(name: str, weights: Union[None, bool, str]) -> tuple[Optional[str], Optional[str]]:
    """Split a ``weights`` argument into a torchvision weights name or a local file path."""
    if weights is None or weights is False:
        return None, None
    if weights is True or weights == "imagenet":
        return _IMAGENET_WEIGHTS[name], None
    if isinstance(weights, str) and "_Weights." in weights:
        return weights, None
    if isinstance(weights, str):
        import os

        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"backbone weights file {weights!r} not found (give a ResNet state dict path, "
                f"'imagenet' to download torchvision's weights, or None for random init)"
            )
        return None, weights
    raise TypeError(f"weights must be None, True, 'imagenet', a torchvision weights name or a path, got {weights!r}")
