"""The public face of mmptq: ``quantize_model`` and the config helpers,
and (in their modules) the workflows the tools call: ``test`` (test /
quantize-and-save), ``benchmark``, ``analyze``, ``convert``, ``export``
(ONNX QDQ)."""
from mmptq.core import (DEFAULT_QUANT_CFG, QuantConfig, QuantSummary,
                        calibrate, discover, freeze, list_presets,
                        load_quant_cfg, prepare, quantize_model,
                        resolve_quant_cfg)
from mmptq.export import ExportError, ExportSummary, export_qdq

__all__ = [
    'quantize_model', 'discover', 'prepare', 'calibrate', 'freeze',
    'resolve_quant_cfg', 'QuantConfig', 'DEFAULT_QUANT_CFG', 'QuantSummary',
    'list_presets', 'load_quant_cfg', 'export_qdq', 'ExportSummary',
    'ExportError'
]
