"""Quantizers for modules that run several times in one forward."""
from typing import List

from torch import Tensor, nn


class PerCallQuantizer(nn.Module):
    """One quantizer per call of a module that runs K times in one forward
    of the model (a detection head shared by the FPN levels): call k uses
    ``slots[k mod K]``, so each level gets the parameters of its own data.
    One quantizer for all calls would have to cover ranges that differ by
    orders of magnitude (clipping the largest level or wasting the grid on
    the smallest); the weights stay shared. The call counter restarts at
    every forward of the model it was prepared in
    (:func:`reset_call_counters`)."""

    def __init__(self, slots: List[nn.Module]) -> None:
        super().__init__()
        if not slots:
            raise ValueError('PerCallQuantizer needs at least one quantizer')
        self.slots = nn.ModuleList(slots)
        self.index = 0

    @property
    def bits(self) -> int:
        return self.slots[0].bits

    def describe(self) -> dict:
        return dict(self.slots[0].describe(), calls=len(self.slots))

    def forward(self, x: Tensor) -> Tensor:
        q = self.slots[self.index % len(self.slots)]
        self.index += 1
        return q(x)


def reset_call_counters(model: nn.Module, *args) -> None:
    """Forward pre-hook of the root model: every forward starts at call 0."""
    for m in model.modules():
        if isinstance(m, PerCallQuantizer):
            m.index = 0
