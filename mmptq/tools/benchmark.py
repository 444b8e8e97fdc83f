"""Benchmark models x quantization configs: metric, delta to FP, cost.

    python -m mmptq.tools.benchmark --demo --quant-cfg minmax_w8a8 w8a8 w4a4
    python -m mmptq.tools.benchmark --model CONFIG CHECKPOINT [--model ...] \\
        --quant-cfg w8a8 w4a4 --num-images 500
    python -m mmptq.tools.benchmark --demo deit --quant-cfg w8a8 \\
        --runtime onnxruntime [--random-init CONFIG ...]
                               (in a checkout: python tools/benchmark.py ...)

Each model's FP checkpoint is evaluated once; each quant config (preset
name or file) is calibrated on a fresh copy and evaluated with the
config's evaluator. Writes benchmark.md, benchmark.json and one plot per
model into the work dir. With ``--runtime onnxruntime`` each model and
quant config is exported to ONNX (FP32, QDQ) and evaluated and timed in
ONNX Runtime beside torch (``benchmark_runtime.md`` / ``.json``);
``--random-init`` configs are timed only (random weights, no data). A
thin CLI over ``mmptq.apis.benchmark`` and ``mmptq.apis.export``.
"""
import argparse
from typing import List, Optional, Sequence

from mmengine.config import DictAction

from mmptq.tools.args import demo_names, description, load_stack


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument('--model', nargs=2, action='append', default=[],
                        metavar=('CONFIG', 'CHECKPOINT'),
                        help='a config and its FP checkpoint (repeatable)')
    parser.add_argument('--variant', metavar='NAME',
                        help='a state-dict variant applied to every --model '
                        'checkpoint after loading (mmptq.models.variants: '
                        'outlier, signflip, bimodal, bimodal16, bimodal32); '
                        'its rows are named <config>-<NAME>')
    parser.add_argument('--demo', nargs='*', metavar='NAME',
                        help=f'the demo models (all, or some of '
                        f'{demo_names()})')
    parser.add_argument('--quant-cfg', nargs='+', required=True,
                        help='preset names or quant_cfg files')
    parser.add_argument('--num-images', type=int,
                        help='evaluate the first N test images only')
    parser.add_argument('--calib-samples', type=int,
                        help='number of calibration images')
    parser.add_argument('--work-dir', default='work_dirs/benchmark')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='overrides for every config, key=value')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='load checkpoints with weights_only=False '
                        '(only for files you trust)')
    parser.add_argument('--runtime', choices=['torch', 'onnxruntime'],
                        default='torch',
                        help='onnxruntime: also export each cell to ONNX '
                        '(FP32, QDQ) and evaluate and time it in ONNX Runtime')
    parser.add_argument('--random-init', nargs='+', default=[],
                        metavar='CONFIG',
                        help='with --runtime onnxruntime: configs timed '
                        'with random weights on --size inputs (no metric)')
    parser.add_argument('--size', type=int, default=224,
                        help='input size of the --random-init models')
    parser.add_argument('--repeats', type=int, default=10,
                        help='timed calls per latency (median)')
    parser.add_argument('--threads', type=int, default=0,
                        help='with --runtime onnxruntime: ORT intra-op and '
                        'torch threads while timing (0: all cores); 1 times '
                        'the CPU time of the calling thread (robust to load)')
    parser.add_argument('--pareto', action='store_true',
                        help='metric against BOPs and size: uniform W4A4 / '
                        'W5A5 / W6A6 / W8A8 of the first --quant-cfg and mixed '
                        'precision at the BOPs of W4A4 / W5A5 / W6A6 '
                        '(mmptq.apis.pareto); pareto.md and one plot per '
                        'model in <work-dir>/pareto_<model>')
    args = parser.parse_args(argv)
    if not args.model and args.demo is None and not args.random_init:
        parser.error('give --model CONFIG CHECKPOINT, --demo and/or '
                     '--random-init')
    if args.random_init and args.runtime != 'onnxruntime':
        parser.error('--random-init times models: add --runtime onnxruntime')
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    load_stack()
    from mmengine.logging import print_log

    from mmptq.apis.benchmark import (demo_models, markdown_table,
                                      model_specs, run_benchmark,
                                      write_report)
    from mmptq.apis.pareto import run_pareto
    models = model_specs(args.model, args.variant)
    if args.demo is not None:
        models += demo_models(args.demo)
    if args.runtime == 'onnxruntime':
        runtime(models, args)
        return
    if args.pareto:
        for spec in models:
            rows = run_pareto(spec, f'{args.work_dir}/pareto_{spec.name}',
                              quant_cfg=args.quant_cfg[0],
                              num_images=args.num_images,
                              calib_samples=args.calib_samples,
                              cfg_options=args.cfg_options)
            print_log('\n' + markdown_table(rows), logger='current')
        return
    rows = run_benchmark(models, args.quant_cfg, args.work_dir,
                         num_images=args.num_images,
                         calib_samples=args.calib_samples,
                         cfg_options=args.cfg_options,
                         unsafe_load=args.unsafe_load)
    paths = write_report(rows, args.work_dir)
    print_log('\n' + markdown_table(rows), logger='current')
    print_log(f'mmptq benchmark: wrote {", ".join(paths.values())}',
              logger='current')


def runtime(models: List, args: argparse.Namespace) -> None:
    from mmengine.logging import print_log

    from mmptq.apis.export import (random_init_latency, runtime_benchmark,
                                   runtime_table, write_runtime_report)
    rows = runtime_benchmark(models, args.quant_cfg, args.work_dir,
                             num_images=args.num_images,
                             calib_samples=args.calib_samples,
                             cfg_options=args.cfg_options,
                             repeats=args.repeats,
                             unsafe_load=args.unsafe_load,
                             threads=args.threads)
    for config in args.random_init:
        rows += random_init_latency(config, args.quant_cfg, args.work_dir,
                                    size=args.size, repeats=args.repeats,
                                    threads=args.threads)
    paths = write_runtime_report(rows, args.work_dir)
    print_log('\n' + runtime_table(rows), logger='current')
    print_log(f'mmptq benchmark: wrote {", ".join(paths)}', logger='current')


if __name__ == '__main__':
    main()
