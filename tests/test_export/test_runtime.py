"""``mmptq.export.runtime``: a model's graph part served by a session."""
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from mmptq.export import ExportGraph
from mmptq.export.runtime import latency_per_image, runtime_forward


class Detector(nn.Module):
    """extract_feat + a dense head with 2 outputs per level (mmdet's)."""

    def __init__(self):
        super().__init__()
        self.bbox_head = nn.Identity()

    def extract_feat(self, x):
        return [x, x[..., ::2, ::2]]


class Session:
    """The two ORT calls runtime_forward makes, on fixed outputs."""

    def __init__(self, names):
        self.names = names

    def get_inputs(self):
        return [SimpleNamespace(name='input')]

    def get_outputs(self):
        return [SimpleNamespace(name=n) for n in self.names]

    def run(self, _, feed):
        x = feed['input']
        return [x + i for i in range(len(self.names))]


def test_detector_head_outputs_regrouped_by_level():
    graph = ExportGraph(Detector())
    assert graph.kind == 'detector' and graph.levels == []
    names = ['out0_level0', 'out0_level1', 'out0_level2',
             'out1_level0', 'out1_level1', 'out1_level2']
    x = torch.zeros(1, 2, 4, 4)
    with runtime_forward(graph, Session(names)):
        assert graph.model.extract_feat(x) is x
        scores, boxes = graph.model.bbox_head(x)
    assert [len(scores), len(boxes)] == [3, 3]
    assert [float(t[0, 0, 0, 0]) for t in scores + boxes] == list(range(6))
    # outside the context the model is itself again
    assert isinstance(graph.model.extract_feat(x), list)
    assert graph.model.bbox_head(x) is x


def test_latency_interleaved_median_per_image():
    """Rounds call each in turn; per call the median per image."""
    calls = []
    ms = latency_per_image({'a': lambda: calls.append('a'),
                            'b': lambda: calls.append('b')},
                           batch_size=8, repeats=5, warmup=2)
    assert calls == ['a', 'b'] * 7
    assert set(ms) == {'a', 'b'} and all(0 <= v < 1 for v in ms.values())
    assert all(np.isfinite(v) for v in ms.values())
