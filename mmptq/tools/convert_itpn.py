"""Convert an official iTPN (or PTQ-for-iTPN) ImageNet classifier checkpoint
to the key names of ``configs/mmpretrain/itpn/``.

    python -m mmptq.tools.convert_itpn SRC.pth DST.pth \\
        --config configs/mmpretrain/itpn/itpn-pixel_hivit-base-p16_in1k.py
                               (in a checkout: python tools/convert_itpn.py)

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
    from mmptq.apis.convert import convert_itpn_checkpoint
    convert_itpn_checkpoint(args.src, args.dst, config=args.config,
                            unsafe=args.unsafe_load)


if __name__ == '__main__':
    main()
