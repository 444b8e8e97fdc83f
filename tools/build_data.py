"""Checkout shim of ``mmptq.tools.build_data`` (also: ``python -m`` it)."""
import os
import sys

os.environ['MMPTQ_DEFER_IMPORTS'] = '1'  # parse the arguments before torch
from mmptq.tools.build_data import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
