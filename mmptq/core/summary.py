"""Per-layer summary of a quantized model."""
from typing import Dict, Iterable, List, Optional

from torch import nn


class QuantSummary(list):
    """Rows dict(name, kind, status, w_bits, a_bits, weight / act /
    operands (quantizer descriptions), reason); ``str()`` is a table.
    ``quant_cfg`` (resolved) and ``calls`` (attention discovery) are what a
    quantized checkpoint needs to rebuild the same structure."""

    def __init__(self,
                 rows: Iterable[dict] = (),
                 quant_cfg: Optional[dict] = None,
                 calls: Optional[Dict[str, list]] = None,
                 call_counts: Optional[Dict[str, int]] = None,
                 first_op: Optional[str] = None) -> None:
        super().__init__(rows)
        self.quant_cfg = quant_cfg
        self.calls = calls or {}
        #: ops run K > 1 times per forward: K (one input quantizer per call)
        self.call_counts = dict(call_counts or {})
        #: the first op with a weight the model runs (``first_op``
        #: overrides select it)
        self.first_op = first_op
        #: what model transforms did (dict rows: transform, target,
        #: consumers, mode, reason, ...)
        self.transforms: List[dict] = []
        #: what block reconstruction did (one row per unit)
        self.reconstruction: List[dict] = []

    def add(self,
            name: str,
            kind: str,
            weight: Optional[nn.Module] = None,
            act: Optional[nn.Module] = None,
            reason: str = '',
            own_forward: bool = False) -> None:
        """``own_forward``: a Conv / Linear subclass with its own forward
        (the row then has ``own_forward=True``)."""
        quantized = weight is not None or act is not None
        row = dict(
            name=name,
            kind=kind,
            status='quantized' if quantized else 'fp',
            w_bits=getattr(weight, 'bits', None),
            a_bits=getattr(act, 'bits', None),
            weight=weight.describe() if weight is not None else None,
            act=act.describe() if act is not None else None,
            reason=reason)
        if own_forward:
            row['own_forward'] = True
        self.append(row)

    def add_attention(self, name: str, role: str,
                      operands: Dict[str, nn.Module]) -> None:
        bits = sorted({q.bits for q in operands.values()})
        self.append(
            dict(
                name=name,
                kind=role,
                status='quantized' if operands else 'fp',
                w_bits=None,
                a_bits=bits[0] if len(bits) == 1 else bits or None,
                operands={k: q.describe() for k, q in operands.items()},
                reason='' if operands else 'no quantizer configured'))

    def mark_unreached(self, quantizer_names: List[str]) -> None:
        """Rows whose quantizers saw no calibration data become FP."""
        layers = {n.rsplit('.', 1)[0] for n in quantizer_names}
        for row in self:
            if row['name'] in layers:
                row['status'] = 'fp'
                row['reason'] = 'not reached by the calibration data'

    def counts(self) -> Dict[str, Dict[str, int]]:
        """{kind: {status: count}}."""
        out: Dict[str, Dict[str, int]] = {}
        for row in self:
            kind = out.setdefault(row['kind'], {})
            kind[row['status']] = kind.get(row['status'], 0) + 1
        return out

    def own_forward_counts(self) -> Dict[str, int]:
        """{status: count} of the Conv / Linear subclasses with their own
        forward: quantized through their call of the parent's op, or FP
        (their forward computes something else); empty when none."""
        out: Dict[str, int] = {}
        for row in self:
            if row.get('own_forward'):
                out[row['status']] = out.get(row['status'], 0) + 1
        return out

    def fp_rows(self) -> List[dict]:
        return [r for r in self if r['status'] == 'fp']

    def __str__(self) -> str:
        lines = [f'{"layer":60s} {"kind":16s} {"status":9s} W  A  detail']
        for r in self:
            a_bits = r['a_bits']  # a list when the operands differ
            if isinstance(a_bits, list):
                a_bits = '/'.join(map(str, a_bits))
            detail = r['reason']
            if not detail and r.get('act'):
                detail = f"{r['act']['quantizer']}/{r['act']['observer']}"
            if not detail and r.get('operands'):
                detail = ', '.join(f"{k}:{v['quantizer']}"
                                   for k, v in r['operands'].items())
            lines.append(f"{r['name'][:60]:60s} {r['kind']:16s} "
                         f"{r['status']:9s} {r['w_bits'] or '-':<2} "
                         f"{a_bits or '-':<2} {detail}")
        own = self.own_forward_counts()
        if own:
            lines.append(
                f"Conv / Linear subclasses with their own forward: "
                f"{own.get('quantized', 0)} quantized (their call of the "
                f"parent's op), {own.get('fp', 0)} FP")
        for t in self.transforms:
            lines.append(f"{t['transform']}: {t['target']} -> "
                         f"{', '.join(t['consumers']) or '-'}: {t['mode']}"
                         + (f" ({t['reason']})" if t['reason'] else ''))
        return '\n'.join(lines)
