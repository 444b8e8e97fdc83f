"""AdaRound (Nagel et al., ICML 2020, "Up or Down? Adaptive Rounding for
Post-Training Quantization"): every quantized op is a unit, its weight
rounding learned (Eq. 21-24: soft rounding h(V), regulariser
Σ 1 − |2h − 1|^β with annealed β) on quantized inputs and FP targets. The
rounding itself is :class:`mmptq.quantizers.AdaRoundQuantizer`; the
'weights' phase of :class:`~.fit.UnitFitter` learns it."""
from mmptq.registry import RECONSTRUCTIONS
from .block import BlockReconstruction


@RECONSTRUCTIONS.register_module()
class AdaRoundReconstruction(BlockReconstruction):
    """AdaRound: layer-wise learned rounding of the weights."""
    DEFAULTS = dict(layerwise=True, phases=('weights', ))
