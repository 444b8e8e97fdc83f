"""mmptq: post-training quantization for OpenMMLab 2.x.

``import mmptq`` registers every observer, quantizer, transform,
reconstruction, loop and runner in mmptq's registries.
"""
from .version import __version__
from .utils import install_torchvision_shim  # noqa: E402

# mmpretrain imports torchvision; a no-op where a real one is installed
install_torchvision_shim()

from . import (apis, engine, nn, observers, quantizers,  # noqa: F401,E402
               reconstruction, transforms)
from .apis import quantize_model  # noqa: E402

__all__ = ['quantize_model', '__version__']
