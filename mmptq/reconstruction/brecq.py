"""BRECQ (Li et al., ICLR 2021, "BRECQ: Pushing the Limit of Post-Training
Quantization by Block Reconstruction"): AdaRound's rounding learned per
block (Sec. 3.2), then the activation steps by LSQ on the same block."""
from mmptq.registry import RECONSTRUCTIONS
from .block import BlockReconstruction


@RECONSTRUCTIONS.register_module()
class BRECQReconstruction(BlockReconstruction):
    """BRECQ: block-wise AdaRound, then the activation steps by LSQ on the
    same block (MSE loss; the Fisher weighting of the paper is not
    implemented)."""
    DEFAULTS = dict(phases=('weights', 'acts'))
