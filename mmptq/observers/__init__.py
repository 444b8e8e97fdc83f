from .base import BaseObserver, quantile_rows, row_quantiles
from .minmax import (AvgMinMaxObserver, EMAMinMaxObserver, MinMaxObserver,
                     PercentileObserver)
from .mse_grid import MSEGridObserver
from .search import (MSEObserver, OMSEObserver, PercentileSearchObserver,
                     SearchObserver)

__all__ = [
    'BaseObserver', 'MinMaxObserver', 'AvgMinMaxObserver', 'EMAMinMaxObserver',
    'PercentileObserver', 'SearchObserver', 'MSEObserver', 'OMSEObserver',
    'PercentileSearchObserver', 'MSEGridObserver', 'quantile_rows',
    'row_quantiles'
]
