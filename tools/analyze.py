"""Data-free quantization analysis of OpenMMLab configs.

    python tools/analyze.py CONFIG [CONFIG ...] --quant-cfg w8a8 w6a6 w4a4

builds each model with random weights (no download), calibrates on
image-like synthetic pictures, and prints the SQNR (dB) of the quantized
model against FP (logits; backbone + neck features for detectors) and the
coverage of the quantized ops, with the seconds and peak memory that
calibration took. A thin CLI over ``mmptq.apis.analyze``.
"""
import argparse
import json

from mmptq.apis import load_quant_cfg
from mmptq.apis.analyze import (build_random_model, quantization_sqnr,
                                synthetic_batch)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('configs', nargs='+',
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
    return parser.parse_args()


def main() -> None:
    args = parse_args()
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
