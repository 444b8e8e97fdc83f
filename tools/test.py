"""Checkout shim of ``mmptq.tools.test`` (``python -m mmptq.tools.test``)."""
import os

os.environ['MMPTQ_DEFER_IMPORTS'] = '1'  # parse the arguments before torch
from mmptq.tools.test import main  # noqa: E402

if __name__ == '__main__':
    main()
