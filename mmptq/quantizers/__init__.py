from .base import BaseQuantizer, check_bits, grad_scale, round_ste
from .log import Log2Quantizer, LogQuantizer, LogSqrt2Quantizer
from .per_call import PerCallQuantizer, reset_call_counters
from .uniform import UniformQuantizer

__all__ = [
    'BaseQuantizer', 'UniformQuantizer', 'LogQuantizer', 'Log2Quantizer',
    'LogSqrt2Quantizer', 'PerCallQuantizer', 'reset_call_counters',
    'check_bits', 'round_ste', 'grad_scale'
]
