"""Engine pieces of mmptq: loops, hooks and checkpoint helpers."""
from .checkpoint import (UnsafeCheckpointError, UnsafeLoadWarning,
                         install_safe_loader, load_checkpoint_file,
                         safe_globals_list)
from .loops import (CalibrationLoop, QuantTestLoop,  # noqa: E402
                    build_calib_dataloader)

__all__ = [
    'UnsafeCheckpointError', 'UnsafeLoadWarning', 'install_safe_loader',
    'load_checkpoint_file', 'safe_globals_list', 'CalibrationLoop',
    'QuantTestLoop', 'build_calib_dataloader'
]
