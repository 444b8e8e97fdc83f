from .config import DEFAULT_QUANT_CFG, resolve_quant_cfg
from .quantize import calibrate, discover, freeze, prepare, quantize_model
from .presets import list_presets, load_quant_cfg
from .summary import QuantSummary
# after .summary: convert imports mmptq.engine, which imports QuantSummary
from .convert import convert_itpn_checkpoint

__all__ = [
    'quantize_model', 'discover', 'prepare', 'calibrate', 'freeze', 'resolve_quant_cfg',
    'DEFAULT_QUANT_CFG', 'QuantSummary', 'list_presets', 'load_quant_cfg',
    'convert_itpn_checkpoint'
]
