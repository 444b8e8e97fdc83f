"""mmptq: post-training quantization for OpenMMLab 2.x.

``import mmptq`` registers every observer, quantizer, transform, hook and
loop in mmptq's registries.
"""
__version__ = '0.1.0'

from . import apis, nn, observers, quantizers  # noqa: F401,E402
from .apis import quantize_model  # noqa: E402

__all__ = ['quantize_model', '__version__']
