"""Model transforms: rewrites that run at stages of ``quantize_model``."""
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from torch import nn


@dataclass
class TransformContext:
    """What a transform may use.

    Attributes:
        run_batch: one forward of the model on the first calibration batch.
        recalibrate: feed all calibration batches again with every
            activation quantizer re-observing, except the given ones
            (which keep their parameters).
        batches: the calibration batches (for rewrites fitted on data).
    """
    run_batch: Callable[[], object]
    recalibrate: Callable[[List[nn.Module]], None]
    batches: Sequence = ()


class BaseTransform:
    """A model rewrite at one or more stages of ``quantize_model``:

    - ``before_wrap``: FP model (adapters applied), before ops are wrapped:
      structure analysis and data-free rewrites;
    - ``before_calibration``: ops wrapped, weight quantizers set;
    - ``after_calibration``: activation statistics collected, before
      freezing (data-driven rewrites).

    ``rows`` are its lines of the summary (dicts: transform, target,
    consumers, mode, reason); a quantized checkpoint stores them, and
    :meth:`restore` gives an FP model what a row's rewrite added, so that
    the checkpoint's state dict loads.
    """

    def __init__(self) -> None:
        self.rows: List[dict] = []

    def before_wrap(self, model: nn.Module, ctx: TransformContext) -> None:
        pass

    def before_calibration(self, model: nn.Module,
                           ctx: TransformContext) -> None:
        pass

    def after_calibration(self, model: nn.Module,
                          ctx: TransformContext) -> None:
        pass

    def first_pass_needs(self) -> Optional[List[nn.Module]]:
        """Called after ``before_calibration``: the quantizers whose
        statistics of the first calibration pass this transform needs,
        when it calibrates all the others again after its rewrite
        (``ctx.recalibrate``); the pass then ends each forward after them.
        None (the default): the whole pass. The pass is cut only when
        every transform gives a list."""
        return None

    @classmethod
    def restore(cls, model: nn.Module, row: dict) -> None:
        """Before a quantized checkpoint is loaded: add to ``model`` the
        parameters that the rewrite of summary row ``row`` created (their
        values come from the checkpoint). Nothing by default: a rewrite
        that only changes values needs no restoring."""
