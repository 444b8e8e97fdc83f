"""Small helpers of mmptq that belong to no single component."""
from .files import atomic_path, file_digest
from .logs import install_pycocotools_capture, install_quiet_progress
from .torchvision_shim import install_torchvision_shim

__all__ = ['atomic_path', 'file_digest', 'install_pycocotools_capture',
           'install_quiet_progress', 'install_torchvision_shim']
