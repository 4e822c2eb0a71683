"""DETR's modules: backbone, position encodings, transformer and the paper's DETR model.

The model families built on them (and ``build_model``, which dispatches on a config's family)
are in :mod:`detr_tutorial.families`.
"""
from .backbone import Backbone, FrozenBatchNorm2d, SmallCNN, build_backbone
from .detr import DETR, MLP, PostProcess, build_detr
from .ms_deform_attn import MSDeformAttn, ms_deform_attn
from .position_encoding import (
    PositionEmbeddingLearned,
    PositionEmbeddingSine,
    build_position_encoding,
    sine_embed_points,
)
from .transformer import (
    MultiheadAttention,
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ = [
    "Backbone",
    "SmallCNN",
    "build_backbone",
    "FrozenBatchNorm2d",
    "DETR",
    "MLP",
    "PostProcess",
    "build_detr",
    "MSDeformAttn",
    "ms_deform_attn",
    "PositionEmbeddingSine",
    "PositionEmbeddingLearned",
    "build_position_encoding",
    "sine_embed_points",
    "MultiheadAttention",
    "Transformer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
]
