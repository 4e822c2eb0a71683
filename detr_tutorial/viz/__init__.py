"""Pictures of DETR: boxes, attention maps, matching, and interactive explorers.

Static helpers draw on matplotlib figures the caller owns (no ``pyplot`` state). The explorers
are ipywidgets apps; importing this package does not import ipywidgets, building an explorer
does (``pip install ipywidgets``). Each explorer has a static twin drawing the same picture
for fixed settings, for books and papers::

    from detr_tutorial import viz
    viz.EncoderAttentionExplorer(model, image)            # image: PIL or [3, H, W] in [0, 1]
    viz.DecoderAttentionExplorer(model, image, threshold=0.7)
    viz.decoder_sampling_figure(model, image)              # RT-DETR: the sampled points
    viz.MatchingExplorer(outputs, targets, image=image)   # cost-weight sliders
    fig = viz.encoder_attention_figure(model, image, point=(120, 80), layer=-1, head="mean")

An explorer runs the model once and redraws from that run; its figure is a PNG inside an
``ipywidgets.Image``, so executed notebooks keep the last picture in their stored widget state.
Static figures are plain ``matplotlib.figure.Figure`` objects: in a notebook, ``%matplotlib
inline`` makes them display as the value of a cell.
"""
from .decoder import (DecoderAttentionExplorer, decoder_attention_figure, decoder_attention_grid,
                      decoder_attention_map, decoder_sampling_figure, decoder_sampling_points)
from .drawing import (IMAGENET_MEAN, IMAGENET_STD, attention_to_image, denormalize, draw_boxes,
                      image_to_tensor, normalize, overlay_attention, plot_decoder_attention_grid,
                      to_display_image)
from .encoder import EncoderAttentionExplorer, encoder_attention_figure, encoder_attention_map
from .inference import AttentionInference, run_attention
from .matching import MatchingExplorer, MatchingProblem, matching_figure
from .static_explorers import (ExplorerHTML, book_language, decoder_map_from_payload,
                               encoder_map_from_payload, matching_assignment_from_payload,
                               pack_decoder, pack_encoder, pack_matching, static_decoder_explorer,
                               static_encoder_explorer, static_matching_explorer)
from .widget_base import figure_to_png, try_explorer

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "AttentionInference", "DecoderAttentionExplorer",
    "EncoderAttentionExplorer", "MatchingExplorer", "MatchingProblem", "attention_to_image",
    "decoder_attention_figure", "decoder_attention_grid", "decoder_attention_map",
    "decoder_sampling_figure", "decoder_sampling_points", "denormalize",
    "draw_boxes", "encoder_attention_figure", "encoder_attention_map", "figure_to_png",
    "image_to_tensor", "matching_figure", "normalize", "overlay_attention",
    "plot_decoder_attention_grid", "run_attention", "to_display_image", "try_explorer",
    "ExplorerHTML", "book_language", "decoder_map_from_payload", "encoder_map_from_payload",
    "matching_assignment_from_payload", "pack_decoder", "pack_encoder", "pack_matching",
    "static_decoder_explorer", "static_encoder_explorer", "static_matching_explorer",
]
