from .config import DEFAULT_QUANT_CFG, resolve_quant_cfg
from .quantize import calibrate, freeze, prepare, quantize_model
from .summary import QuantSummary

__all__ = [
    'quantize_model', 'prepare', 'calibrate', 'freeze', 'resolve_quant_cfg',
    'DEFAULT_QUANT_CFG', 'QuantSummary'
]
