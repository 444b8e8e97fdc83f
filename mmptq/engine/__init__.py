"""Engine pieces of mmptq: loops, hooks and checkpoint helpers."""
from .checkpoint import (UnsafeCheckpointError, UnsafeLoadWarning,
                         install_safe_loader, load_checkpoint_file,
                         safe_globals_list)

__all__ = [
    'UnsafeCheckpointError', 'UnsafeLoadWarning', 'install_safe_loader',
    'load_checkpoint_file', 'safe_globals_list'
]
