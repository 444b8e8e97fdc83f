"""mmengine integration, above ``mmptq.core``: loops, calibration data,
checkpoint I/O, the results report, a Runner for distributed runs without
CUDA."""
from .calib_data import build_calib_dataloader
from .checkpoint import (UnsafeCheckpointError, UnsafeLoadWarning,
                         install_safe_loader, is_quantized_checkpoint,
                         load_checkpoint_file, load_quantized_checkpoint,
                         load_state_checked, publish_checkpoint,
                         safe_globals_list, save_quantized_checkpoint, unwrap)
from .dist_runner import CPUDistRunner, init_dist_without_cuda
from .loops import (CalibrationLoop, QuantTestLoop, detached_hooks,
                    weight_swapping_hooks)
from .report import plain_metrics, write_results

__all__ = [
    'build_calib_dataloader', 'UnsafeCheckpointError', 'UnsafeLoadWarning',
    'install_safe_loader', 'is_quantized_checkpoint', 'load_checkpoint_file',
    'load_quantized_checkpoint', 'load_state_checked', 'publish_checkpoint',
    'safe_globals_list', 'save_quantized_checkpoint', 'unwrap',
    'CPUDistRunner', 'init_dist_without_cuda', 'CalibrationLoop',
    'QuantTestLoop', 'detached_hooks', 'weight_swapping_hooks',
    'plain_metrics', 'write_results'
]
