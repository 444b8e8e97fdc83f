"""Checkout shim of ``mmptq.tools.export`` (``python -m mmptq.tools.export``)."""
import os

os.environ['MMPTQ_DEFER_IMPORTS'] = '1'  # parse the arguments before torch
from mmptq.tools.export import main  # noqa: E402

if __name__ == '__main__':
    main()
