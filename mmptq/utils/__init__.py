"""Small helpers of mmptq that belong to no single component."""
from .torchvision_shim import install_torchvision_shim

__all__ = ['install_torchvision_shim']
