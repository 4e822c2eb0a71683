"""DETR's modules: backbone, position encodings, transformer, the DETR model and its builder."""
from .backbone import Backbone, FrozenBatchNorm2d, SmallCNN, build_backbone
from .detr import DETR, MLP, PostProcess, build_model, predict
from .position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine, build_position_encoding
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
    "build_model",
    "predict",
    "PositionEmbeddingSine",
    "PositionEmbeddingLearned",
    "build_position_encoding",
    "MultiheadAttention",
    "Transformer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
]
