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
from typing import Optional, Sequence

from mmptq.tools.args import run_converter


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_converter(__doc__, 'lavt', argv)


if __name__ == '__main__':
    main()
