"""Checkout shim of ``mmptq.tools.quantize`` (``python -m mmptq.tools.quantize``)."""
import os

os.environ['MMPTQ_DEFER_IMPORTS'] = '1'  # parse the arguments before torch
from mmptq.tools.quantize import main  # noqa: E402

if __name__ == '__main__':
    main()
