"""The results of a quantized test run: the FP vs quantized table in the
log and ``mmptq_results.json`` in the work_dir."""
import json
import os.path as osp
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.logging import print_log

from mmptq.version import __version__
from mmptq.core import QuantSummary


def plain_metrics(metrics: Optional[dict]) -> Optional[dict]:
    """Metrics as JSON numbers: evaluators may return numpy or torch
    scalars (mmseg's IoUMetric does), which ``json`` would write as text."""
    if metrics is None:
        return None
    return {k: v.item() if hasattr(v, 'item') and getattr(v, 'ndim', 1) == 0
            else v for k, v in metrics.items()}


def _fmt(value) -> str:
    if hasattr(value, 'item') and getattr(value, 'ndim', 1) == 0:
        value = value.item()
    return f'{value:.4f}' if isinstance(value, float) else str(value)


def write_results(work_dir: str, metrics: dict, fp_metrics: Optional[dict],
                  summary: QuantSummary, timings: dict,
                  checkpoint: Optional[str]) -> None:
    """Log FP vs quantized metrics (with ``fp_metrics``) and the coverage,
    and write ``work_dir/mmptq_results.json`` (main process only)."""
    if not is_main_process():
        return
    if fp_metrics is not None:
        lines = [f'{"metric":40s} {"FP":>10s} {"quantized":>10s}']
        for key in metrics:
            fp = fp_metrics.get(key)
            lines.append(f'{key:40s} {_fmt(fp):>10s} '
                         f'{_fmt(metrics[key]):>10s}')
        print_log('mmptq: FP vs quantized\n' + '\n'.join(lines),
                  logger='current')
    print_log(f'mmptq: quantized ops {summary.counts()}', logger='current')
    result = dict(
        metrics=plain_metrics(metrics),
        fp_metrics=plain_metrics(fp_metrics),
        quant_cfg=summary.quant_cfg,
        summary=list(summary),
        transforms=summary.transforms,
        reconstruction=summary.reconstruction,
        timings=timings,
        checkpoint=checkpoint,
        mmptq_version=__version__)
    path = osp.join(work_dir, 'mmptq_results.json')
    with open(path, 'w') as f:
        json.dump(result, f, indent=2, default=str)
    print_log(f'mmptq: results written to {path}', logger='current')
