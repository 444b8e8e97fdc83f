from .config import DEFAULT_QUANT_CFG, resolve_quant_cfg
from .quantize import calibrate, discover, freeze, prepare, quantize_model
from .presets import list_presets, load_quant_cfg
from .summary import QuantSummary
from .convert import convert_itpn_checkpoint  # noqa: I001  (needs .summary: engine imports it)

__all__ = [
    'quantize_model', 'discover', 'prepare', 'calibrate', 'freeze', 'resolve_quant_cfg',
    'DEFAULT_QUANT_CFG', 'QuantSummary', 'list_presets', 'load_quant_cfg',
    'convert_itpn_checkpoint'
]
