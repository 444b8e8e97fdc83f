"""Convert an official iTPN (or PTQ-for-iTPN) ImageNet classifier checkpoint
to the key names of ``configs/mmpretrain/itpn/``.

    python -m mmptq.tools.convert_itpn SRC.pth DST.pth \\
        --config configs/mmpretrain/itpn/itpn-pixel_hivit-base-p16_in1k.py
                               (in a checkout: python tools/convert_itpn.py)

With ``--config`` the converted weights are loaded strictly into that
config's model before DST is written. A thin CLI over
``mmptq.apis.convert``.
"""
from typing import Optional, Sequence

from mmptq.tools.args import run_converter


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_converter(__doc__, 'itpn', argv)


if __name__ == '__main__':
    main()
