"""Data-free quantization analysis of OpenMMLab configs.

    python -m mmptq.tools.analyze CONFIG [CONFIG ...] --quant-cfg w8a8 w4a4
                               (in a checkout: python tools/analyze.py ...)

builds each model with random weights (no download), calibrates on
image-like synthetic pictures, and prints the SQNR (dB) of the quantized
model against FP (logits; backbone + neck features for detectors) and the
coverage of the quantized ops, with the seconds and peak memory that
calibration took. A thin CLI over ``mmptq.apis.analyze``.

    python -m mmptq.tools.analyze CONFIG --checkpoint FP.pth --quant-cfg w4a4 \
        --sensitivity [--budget W5A5 --metric bops --candidates 4 6 8]
        [--a-candidates 4 5 6 8] [--hutchinson 8 [--objective hessian]]

measures the damage of every quantized op alone at the low setting (output
SQNR and, with a checkpoint, the task-loss increase on the calibration
data; with ``--hutchinson`` the weights' Hessian-trace sensitivity of
HAWQ-V2) and writes a table (markdown, JSON) and a per-op plot to the work
dir; with ``--budget`` (or a quant_cfg with ``mixed_precision``) it also
allocates per-op bits under the budget and writes them as
``mixed_precision.py``, a quant_cfg for ``--quant-cfg``
(``mmptq.apis.sensitivity``).

    python -m mmptq.tools.analyze --rorq-study

runs PTQ4RIS's RORQ study instead (no config): the SQNR of the real
all-MiniLM-L6-v2's output features on the mnist_ref demo expressions at
A8/A6/A4, plain per-tensor input quantizers vs RORQ, and the groups RORQ
finds per layer (``mmptq.apis.rorq_study``, docs/methods/ptq4ris.md).
"""
import argparse
import json
from typing import Optional, Sequence

from mmptq.tools.args import description, load_stack


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument('configs', nargs='*',
                        help="config files or packaged ones ('mmdet::...')")
    parser.add_argument('--quant-cfg', nargs='+', default=['w8a8'],
                        help='preset names or quant config files')
    parser.add_argument('--size', type=int, nargs=2, default=[224, 224],
                        metavar=('H', 'W'), help='input size')
    parser.add_argument('--calib-batches', type=int, default=4)
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--coverage', action='store_true',
                        help='print the per-kind coverage of each model')
    parser.add_argument('--out', help='write the results as JSON here')
    parser.add_argument('--rorq-study', action='store_true',
                        help='no config: the RORQ study of the MiniLM text '
                        'encoder (mmptq.apis.rorq_study, data under data/)')
    sens = parser.add_argument_group('sensitivity and mixed precision')
    sens.add_argument('--sensitivity', action='store_true',
                      help='per-op sensitivity of each config (first '
                      '--quant-cfg); reports go to --work-dir')
    sens.add_argument('--checkpoint',
                      help='FP weights (one config): calibration data and '
                      'task loss from the config')
    sens.add_argument('--bits', type=int,
                      help='the low setting (default: the quant_cfg\'s)')
    sens.add_argument('--budget',
                      help="allocate bits under this budget: 'W5A5' or a "
                      'number in the metric\'s unit')
    sens.add_argument('--metric', choices=('bops', 'size', 'avg_bits'))
    sens.add_argument('--candidates', type=int, nargs='+')
    sens.add_argument('--w-candidates', type=int, nargs='+',
                      help='bit widths of the weights (default: '
                      '--candidates)')
    sens.add_argument('--a-candidates', type=int, nargs='+',
                      help='bit widths of the activations (default: '
                      '--candidates), e.g. 4 5 6 8: a floor of 4 bits')
    sens.add_argument('--objective', choices=('noise', 'loss', 'hessian'))
    sens.add_argument('--hutchinson', type=int, default=0, metavar='M',
                      help='with --checkpoint: Hutchinson Hessian-trace '
                      'estimate of the weights (HAWQ-V2), M Rademacher '
                      'vectors per batch, in the table; with '
                      '--objective hessian: M of the allocation')
    sens.add_argument('--calib-samples', type=int)
    sens.add_argument('--work-dir', default='work_dirs/analyze')
    args = parser.parse_args(argv)
    if bool(args.configs) == args.rorq_study:
        parser.error('give configs, or --rorq-study without one')
    if args.checkpoint and len(args.configs) > 1:
        parser.error('--checkpoint takes one config')
    return args


def sensitivity(args: argparse.Namespace) -> None:
    from mmptq.apis.sensitivity import run_sensitivity
    mixed = dict(metric=args.metric, candidates=args.candidates,
                 w_candidates=args.w_candidates,
                 a_candidates=args.a_candidates, objective=args.objective,
                 hutchinson=(args.hutchinson or None)
                 if args.objective == 'hessian' else None)
    if args.budget is not None:
        budget = args.budget
        mixed['budget'] = budget if budget[0] in 'wW' else float(budget)
    mixed = {k: v for k, v in mixed.items() if v is not None}
    for config in args.configs:
        work_dir = args.work_dir if len(args.configs) == 1 else \
            f"{args.work_dir}/{config.rsplit('/', 1)[-1].rsplit('.', 1)[0]}"
        paths = run_sensitivity(
            config, args.quant_cfg[0], work_dir, checkpoint=args.checkpoint,
            bits=args.bits, mixed_precision=mixed or None,
            calib_samples=args.calib_samples,
            size=tuple(args.size), calib_batches=args.calib_batches,
            hutchinson=args.hutchinson)
        print(f'{config}: wrote {", ".join(paths.values())}')


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    load_stack()
    from mmptq.apis import load_quant_cfg
    from mmptq.apis.analyze import (build_random_model, quantization_sqnr,
                                    synthetic_batch)
    if args.rorq_study:
        from mmptq.apis.rorq_study import rorq_study
        print(rorq_study().markdown())
        return None
    if args.sensitivity:
        return sensitivity(args)
    rows = []
    for config in args.configs:
        model, scope = build_random_model(config)
        calib = [synthetic_batch(scope, args.batch_size, tuple(args.size), i)
                 for i in range(args.calib_batches)]
        test = synthetic_batch(scope, 2, tuple(args.size), seed=10_000)
        row = dict(config=config)
        for name in args.quant_cfg:
            result = quantization_sqnr(model, scope, load_quant_cfg(name),
                                       calib, test)
            summary = result.summary
            row[name] = round(result.sqnr, 2)
            row[f'{name} calib s'] = round(result.calib_s, 1)
            row[f'{name} peak MiB'] = round(result.peak_mib)
        row['coverage'] = summary.counts()
        row['fp_ops'] = [(r['name'], r['reason']) for r in summary.fp_rows()]
        rows.append(row)
    print('| config | ' + ' | '.join(
        f'{n} dB | {n} calib s | {n} peak MiB' for n in args.quant_cfg) + ' |')
    print('|' + '---|' * (3 * len(args.quant_cfg) + 1))
    for row in rows:
        print(f"| {row['config']} | " + ' | '.join(
            f"{row[n]:.1f} | {row[f'{n} calib s']:.1f} | "
            f"{row[f'{n} peak MiB']}" for n in args.quant_cfg) + ' |')
    if args.coverage:
        for row in rows:
            print(f"\n{row['config']}: {row['coverage']}")
            for name, reason in row['fp_ops']:
                print(f'  FP: {name}: {reason}')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(rows, f, indent=2)


if __name__ == '__main__':
    main()
