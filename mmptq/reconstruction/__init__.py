"""Block reconstruction (``RECONSTRUCTIONS``), run by ``quantize_model``
after calibration: the method-independent part in ``block.py``, one file
per method (AdaRound, BRECQ, QDrop, PD-Quant, APHQ-ViT); APHQ-ViT's MLP
Reconstruction (``aphq_mlp.py``) is a model transform (``MODEL_TRANSFORMS``)
that uses APHQ-ViT's Hessian estimate."""
from .adaround import AdaRoundReconstruction
from .aphq import APHQReconstruction
from .aphq_mlp import APHQMLPReconstruction
from .block import BlockReconstruction
from .brecq import BRECQReconstruction
from .cache import RecordCache
from .partition import find_units
from .pdquant import PDQuantReconstruction
from .qdrop import QDropReconstruction
from .state import ReconstructionState

__all__ = [
    'RecordCache', 'BlockReconstruction', 'AdaRoundReconstruction',
    'BRECQReconstruction', 'QDropReconstruction', 'PDQuantReconstruction',
    'APHQReconstruction', 'APHQMLPReconstruction', 'ReconstructionState', 'find_units'
]
