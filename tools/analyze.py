"""Checkout shim of ``mmptq.tools.analyze`` (``python -m mmptq.tools.analyze``)."""
import os

os.environ['MMPTQ_DEFER_IMPORTS'] = '1'  # parse the arguments before torch
from mmptq.tools.analyze import main  # noqa: E402

if __name__ == '__main__':
    main()
