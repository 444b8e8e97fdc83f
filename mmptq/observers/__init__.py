from .base import BaseObserver, quantile_rows
from .minmax import EMAMinMaxObserver, MinMaxObserver, PercentileObserver
from .search import (MSEObserver, OMSEObserver, PercentileSearchObserver,
                     SearchObserver)

__all__ = [
    'BaseObserver', 'MinMaxObserver', 'EMAMinMaxObserver',
    'PercentileObserver', 'SearchObserver', 'MSEObserver', 'OMSEObserver',
    'PercentileSearchObserver', 'quantile_rows'
]
