from .adaround import AdaRoundQuantizer
from .agq import AGQObserver, AGQQuantizer, agq_search
from .base import BaseQuantizer, check_bits, grad_scale, round_ste
from .cag import CAGQuantizer, kmeans, progressive_groups
from .drq import DualRegionQuantizer, RegionSearchObserver
from .grouped import GroupedChannelQuantizer
from .hluq import HLUQuantizer, hybrid_quant
from .lis import LISQuantizer, int_exp, log_int_softmax
from .log import Log2Quantizer, LogQuantizer, LogSqrt2Quantizer
from .per_call import PerCallQuantizer, reset_call_counters
from .ptf import PTFQuantizer
from .rorq import OutlierReorderQuantizer, fold_reorder, outlier_groups
from .uniform import UniformQuantizer

__all__ = [
    'BaseQuantizer', 'UniformQuantizer', 'LogQuantizer', 'Log2Quantizer',
    'LogSqrt2Quantizer', 'PTFQuantizer', 'LISQuantizer', 'int_exp',
    'log_int_softmax', 'AdaRoundQuantizer', 'PerCallQuantizer', 'reset_call_counters',
    'check_bits', 'round_ste', 'grad_scale', 'AGQQuantizer', 'AGQObserver',
    'agq_search', 'DualRegionQuantizer', 'RegionSearchObserver',
    'OutlierReorderQuantizer', 'fold_reorder', 'outlier_groups',
    'GroupedChannelQuantizer', 'CAGQuantizer', 'kmeans',
    'progressive_groups', 'HLUQuantizer', 'hybrid_quant'
]
