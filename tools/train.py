"""Checkout shim of ``mmptq.tools.train`` (``python -m mmptq.tools.train``)."""
import os

os.environ['MMPTQ_DEFER_IMPORTS'] = '1'  # parse the arguments before torch
from mmptq.tools.train import main  # noqa: E402

if __name__ == '__main__':
    main()
