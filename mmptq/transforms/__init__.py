"""Model transforms (``MODEL_TRANSFORMS``): rewrites at the stages of
``quantize_model`` (RepQ-ViT reparameterization, ...)."""
from .base import BaseTransform, TransformContext
from .big import BimodalIntegration, count_peaks, find_qk_pairs, fold_sign
from .graph import NormUse, trace_norm_uses
from .repq import RepQReparam, fold_reparam, reparam_params

__all__ = [
    'BaseTransform', 'TransformContext', 'NormUse', 'trace_norm_uses',
    'RepQReparam', 'fold_reparam', 'reparam_params', 'BimodalIntegration',
    'count_peaks', 'find_qk_pairs', 'fold_sign'
]
