"""Checkout shim of ``mmptq.tools.benchmark`` (``python -m mmptq.tools.benchmark``)."""
import os

os.environ['MMPTQ_DEFER_IMPORTS'] = '1'  # parse the arguments before torch
from mmptq.tools.benchmark import main  # noqa: E402

if __name__ == '__main__':
    main()
