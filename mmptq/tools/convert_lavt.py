"""Convert a released LAVT checkpoint (yz93/LAVT-RIS: ``lavt_one``, the
weights PTQ4RIS quantizes, or ``lavt`` with its separate ``bert_model``) to
the keys of ``configs/mmdet/ptq4ris/`` (``mmptq.LAVT``); the BERT weights
go into the converted file, so a run needs only the tokenizer files.

    python -m mmptq.tools.convert_lavt SRC.pth DST.pth \\
        --config configs/mmdet/ptq4ris/lavt_swin-b-w12_bert-base_refcoco.py
                               (in a checkout: python tools/convert_lavt.py)

With ``--config`` the converted weights are loaded strictly into that
config's model before DST is written. A thin CLI over
``mmptq.apis.convert``.
"""
import argparse
from typing import Optional, Sequence

from mmptq.tools.args import description, load_stack


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument('src', help='the released checkpoint')
    parser.add_argument('dst', help='where to write the converted one')
    parser.add_argument('--config', help='check against this config')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='load SRC with weights_only=False (only for '
                        'files you trust)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    load_stack()
    from mmptq.apis.convert import convert_lavt_checkpoint
    convert_lavt_checkpoint(args.src, args.dst, config=args.config,
                            unsafe=args.unsafe_load)


if __name__ == '__main__':
    main()
