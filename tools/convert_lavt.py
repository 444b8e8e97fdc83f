"""Checkout shim of ``mmptq.tools.convert_lavt`` (also: ``python -m`` it)."""
import os

os.environ['MMPTQ_DEFER_IMPORTS'] = '1'  # parse the arguments before torch
from mmptq.tools.convert_lavt import main  # noqa: E402

if __name__ == '__main__':
    main()
