"""What a person looks at: feature visualisation grown from noise seeds, saliency maps, and the figures of
influence (class-sorted heatmaps, most-helpful grids, class-match curves)."""

from interp.viz.featviz import (
    FeatVizConfig,
    FeatVizResult,
    grey_seed,
    image_seed,
    layer_names,
    noise_seeds,
    penultimate_layer,
    total_variation,
    visualize,
)
from interp.viz.plots import (
    class_match_figure,
    class_sorted,
    featviz_figure,
    heatmap_figure,
    influence_grid_figure,
    saliency_figure,
    sensitivity_figure,
)
from interp.viz.saliency import concentration, edge_map, magnitude, saliency_maps

__all__ = [
    "FeatVizConfig",
    "FeatVizResult",
    "class_match_figure",
    "class_sorted",
    "concentration",
    "edge_map",
    "featviz_figure",
    "grey_seed",
    "heatmap_figure",
    "image_seed",
    "influence_grid_figure",
    "layer_names",
    "magnitude",
    "noise_seeds",
    "penultimate_layer",
    "saliency_figure",
    "saliency_maps",
    "sensitivity_figure",
    "total_variation",
    "visualize",
]
