"""Block reconstruction (AdaRound / BRECQ / QDrop / PD-Quant) as hooks of
the calibration loop."""
from .cache import RecordCache
from .hooks import (AdaRoundReconstruction, BlockReconstruction,
                    BRECQReconstruction, PDQuantReconstruction,
                    QDropReconstruction, ReconstructionState)
from .partition import find_units

__all__ = [
    'RecordCache', 'BlockReconstruction', 'AdaRoundReconstruction',
    'BRECQReconstruction', 'QDropReconstruction', 'PDQuantReconstruction',
    'ReconstructionState', 'find_units'
]
