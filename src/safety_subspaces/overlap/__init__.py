"""Mode Subspace Overlap (paper §5-6): of weight updates (weights.py) and of activations (activations.py)."""

from .common import DEFAULT_ETAS, depth_band, depth_layer, mso_curve, pair_label

__all__ = ["DEFAULT_ETAS", "depth_band", "depth_layer", "mso_curve", "pair_label"]
