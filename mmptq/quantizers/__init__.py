from .base import BaseQuantizer, check_bits, grad_scale, round_ste
from .log import Log2Quantizer, LogQuantizer, LogSqrt2Quantizer
from .uniform import UniformQuantizer

__all__ = [
    'BaseQuantizer', 'UniformQuantizer', 'LogQuantizer', 'Log2Quantizer',
    'LogSqrt2Quantizer', 'check_bits', 'round_ste', 'grad_scale'
]
