"""``first_op`` overrides: the first op with a weight that the model runs
(the layer reading the image), found by the discovery forward, whatever its
name or its place in the module tree."""
import re

import pytest
import torch
from torch import nn

from mmptq.apis import quantize_model, resolve_quant_cfg
from mmptq.apis.analyze import build_random_model, synthetic_batch
from mmptq.apis.benchmark import demo_models
from mmptq.core import discover, quant_meta, restore_quantized, run_batch

#: the regex the w4a4 preset used before ``first_op`` existed
OLD_W4A4_REGEX = (r'(.*\.)?(patch_embed\.projection|patch_embed\.proj|'
                  r'backbone\.conv1|backbone\.stem\.0\.conv|'
                  r'backbone\.layers\.0\.0\.projection)')


class HeadDeclaredFirst(nn.Module):
    """Module order (head, stem) differs from execution order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 4)
        self.norm = nn.LayerNorm(8)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.head(self.norm(self.stem(x).mean((2, 3))))


def test_first_op_is_the_first_run_not_the_first_declared():
    torch.manual_seed(0)
    data = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    cfg = dict(w_bits=4, a_bits=4, overrides=[dict(first_op=True, a_bits=8)])
    model, summary = quantize_model(HeadDeclaredFirst().eval(), cfg, data)
    rows = {r['name']: r for r in summary}
    assert summary.first_op == 'stem'
    assert (rows['stem']['a_bits'], rows['head']['a_bits']) == (8, 4)
    assert model.stem.input_quantizer.bits == 8
    # a quantized checkpoint rebuilds the same bits without a forward
    fresh = HeadDeclaredFirst().eval()
    restored = restore_quantized(fresh, quant_meta(summary))
    assert {r['name']: r['a_bits'] for r in restored} == {
        r['name']: r['a_bits'] for r in summary}
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(data[0]), model(data[0]), rtol=0,
                                   atol=0)


@pytest.mark.parametrize('override,match', [
    (dict(first_op=True, name='stem', a_bits=8), 'either a "name"'),
    (dict(a_bits=8), 'either a "name"'),
    (dict(first_op=1, name='x'), 'either a "name"'),
    (dict(first_op='yes', a_bits=8), 'use first_op=True'),
])
def test_bad_first_op_override(override, match):
    with pytest.raises(ValueError, match=match):
        resolve_quant_cfg(dict(overrides=[override]))


DEMO_FIRST_OPS = {
    'mask-rcnn_swin': ('backbone.patch_embed.projection', (128, 128)),
    'retinanet_r18': ('backbone.conv1', (128, 128)),
    'deit': ('backbone.patch_embed.projection', (28, 28)),
    'hivit': ('backbone.patch_embed.proj', (28, 28)),
    'segformer': ('backbone.layers.0.0.projection', (128, 128)),
}


@pytest.mark.parametrize('name', list(DEMO_FIRST_OPS))
def test_first_op_of_the_demo_models_is_what_the_name_regex_chose(name):
    """The w4a4 preset selected these layers by a regex of OpenMMLab
    names; ``first_op`` finds the same ones by running the model."""
    pytest.importorskip('mmdet')
    pytest.importorskip('mmseg')
    pytest.importorskip('mmpretrain')
    spec, = demo_models([name])
    model, scope = build_random_model(spec.config)
    expected, size = DEMO_FIRST_OPS[name]
    _, _, first_op = discover(model, synthetic_batch(scope, 1, size),
                              run_batch(model))
    assert first_op == expected
    assert re.fullmatch(OLD_W4A4_REGEX, first_op)
