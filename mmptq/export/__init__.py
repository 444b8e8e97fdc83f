"""Export of a quantized model to a runtime: ONNX with QDQ nodes."""
from .graphs import ExportGraph
from .onnx_qdq import (OPSET, ExportError, ExportSummary, QuantizerExport,
                       export_qdq, locate_op, plan_export, qdq_mode,
                       weight_codes)

__all__ = [
    'OPSET', 'ExportError', 'ExportGraph', 'ExportSummary',
    'QuantizerExport', 'export_qdq', 'locate_op', 'plan_export', 'qdq_mode',
    'weight_codes'
]
