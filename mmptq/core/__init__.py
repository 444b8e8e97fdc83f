"""``quantize_model``'s machinery, below the engine: config resolution
(once), wrapping, calibration, freezing, the summary, restoring a quantized
checkpoint, presets. Knows nothing of Runners or tools."""
from .config import (DEFAULT_QUANT_CFG, LayerRules, QuantConfig,
                     merge_quant_cfg, model_options, quant_options,
                     resolve_quant_cfg)
from .mixed_precision import (Unit, allocate, budget_cost, build_units,
                              check_mixed_precision, extrapolate,
                              parse_uniform, rule_bits, rules_cost,
                              to_overrides, total_params)
from .presets import PACKAGE_DATA, list_presets, load_quant_cfg
from .quantize import (calibrate, discover, find_quantizers, freeze, prepare,
                       quantize_model, run_batch)
from .restore import META_KEY, quant_meta, restore_quantized
from .sensitivity import QuantOp, only, op_sensitivity, quant_ops
from .summary import QuantSummary

__all__ = [
    'DEFAULT_QUANT_CFG', 'LayerRules', 'QuantConfig', 'merge_quant_cfg',
    'model_options', 'quant_options', 'resolve_quant_cfg', 'PACKAGE_DATA',
    'list_presets', 'load_quant_cfg', 'calibrate', 'discover',
    'find_quantizers', 'freeze', 'prepare', 'quantize_model', 'run_batch',
    'META_KEY', 'quant_meta', 'restore_quantized',
    'QuantSummary', 'Unit', 'allocate', 'budget_cost', 'build_units',
    'check_mixed_precision', 'extrapolate', 'parse_uniform', 'to_overrides',
    'total_params', 'rule_bits', 'rules_cost',
    'QuantOp', 'only', 'op_sensitivity', 'quant_ops'
]
