"""Engine pieces of mmptq: loops, hooks, a runner and checkpoint helpers."""
from .checkpoint import (UnsafeCheckpointError, UnsafeLoadWarning,
                         install_safe_loader, load_checkpoint_file,
                         publish_checkpoint, safe_globals_list)
from .loops import (CalibrationLoop, QuantTestLoop,  # noqa: E402
                    build_calib_dataloader)
from .runner import CPUDistRunner, init_dist_without_cuda  # noqa: E402

__all__ = [
    'UnsafeCheckpointError', 'UnsafeLoadWarning', 'install_safe_loader',
    'load_checkpoint_file', 'publish_checkpoint', 'safe_globals_list',
    'CalibrationLoop', 'QuantTestLoop', 'build_calib_dataloader', 'CPUDistRunner',
    'init_dist_without_cuda'
]
