from .adapters import ADAPTERS, MultiheadAttentionAdapter, apply_adapters
from .attention import AttentionCallRouter, attention_sites, record_calls
from .modules import (QuantConv1d, QuantConv2d, QuantConv3d,
                      QuantConvTranspose2d, QuantLayerNorm, QuantLinear,
                      QuantMatMul, QuantSDPA, QuantSoftmax,
                      forget_quantized_weights)
from .own_forward import (QuantOwnForwardMixin, own_forward_class,
                          own_weight_calls)

__all__ = [
    'QuantLinear', 'QuantConv1d', 'QuantConv2d', 'QuantConv3d',
    'QuantConvTranspose2d', 'QuantMatMul', 'QuantSoftmax', 'QuantSDPA',
    'QuantLayerNorm',
    'AttentionCallRouter', 'attention_sites', 'record_calls', 'ADAPTERS',
    'MultiheadAttentionAdapter', 'apply_adapters', 'QuantOwnForwardMixin',
    'own_forward_class', 'own_weight_calls', 'forget_quantized_weights'
]
