"""Convert a released LAVT checkpoint (yz93/LAVT-RIS: ``lavt_one``, the
weights PTQ4RIS quantizes, or ``lavt`` with its separate ``bert_model``) to
the keys of ``configs/mmdet/ptq4ris/`` (``mmptq.LAVT``); the BERT weights
go into the converted file, so a run needs only the tokenizer files.

    python tools/convert_lavt.py SRC.pth DST.pth \
        --config configs/mmdet/ptq4ris/lavt_swin-b-w12_bert-base_480_refcoco.py

With ``--config`` the converted weights are loaded strictly into that
config's model before DST is written. A thin CLI over
``mmptq.apis.convert``.
"""
import argparse

from mmptq.apis.convert import convert_lavt_checkpoint


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='the released checkpoint')
    parser.add_argument('dst', help='where to write the converted one')
    parser.add_argument('--config', help='check against this config')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='load SRC with weights_only=False (only for '
                        'files you trust)')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    convert_lavt_checkpoint(args.src, args.dst, config=args.config,
                            unsafe=args.unsafe_load)


if __name__ == '__main__':
    main()
