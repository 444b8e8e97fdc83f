"""mmpretrain's EfficientNet-B0 builds 49 of its 81 convs as mmcv's
``Conv2dAdaptivePadding`` (TF "same" padding in its own forward): all are
quantized, and its W8A8 SQNR is in ResNet-18's range."""
import math

import pytest

from mmptq.apis import load_quant_cfg
from mmptq.apis.analyze import (build_random_model, quantization_sqnr,
                                synthetic_batch)

EFFICIENTNET = 'mmpretrain::efficientnet/efficientnet-b0_8xb32_in1k.py'
RESNET = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'


def w8a8(config):
    """W8A8 SQNR (dB) and summary of ``config`` at 64x64 with the weights
    of the model classes' own ``init_cfg`` (Kaiming convs, BN at 1; under
    PyTorch's default init EfficientNet's signal vanishes, ~1e-22 after
    the last stage, and the SQNR is ~200 dB whatever is quantized)."""
    model, scope = build_random_model(config)
    calib = [synthetic_batch(scope, 1, (64, 64), i) for i in range(2)]
    test = synthetic_batch(scope, 2, (64, 64), seed=10_000)
    result = quantization_sqnr(model, scope, load_quant_cfg('w8a8'), calib,
                               test)
    return result.sqnr, result.summary


@pytest.fixture(scope='module')
def efficientnet():
    return w8a8(EFFICIENTNET)


def test_efficientnet_every_conv_quantized(efficientnet):
    _, summary = efficientnet
    assert summary.fp_rows() == []
    assert summary.counts() == {'conv2d': {'quantized': 81},
                                'linear': {'quantized': 1}}
    assert summary.own_forward_counts() == {'quantized': 49}
    assert summary.calls  # the discovery records a checkpoint keeps


def test_efficientnet_sqnr_in_resnet_range(efficientnet):
    sqnr, _ = efficientnet
    resnet, summary = w8a8(RESNET)
    assert summary.fp_rows() == []
    print(f'W8A8 SQNR at 64x64: EfficientNet-B0 {sqnr:.2f} dB, '
          f'ResNet-18 {resnet:.2f} dB')
    # Both finite and within the W8A8 band [10, 40] dB: 8-bit quantization
    # of every weighted op adds noise ~35-40 dB below each op's signal,
    # summed over 21 (ResNet-18) to 82 (EfficientNet) ops, so the output
    # SQNR lies below 40 dB (the ~200 dB of a model whose convs stay FP, or
    # whose signal vanished, fails); 10 dB is far above a broken op (~0 dB).
    # Measured with this seed: EfficientNet ~13 dB, ResNet-18 ~35 dB. The
    # gap is EfficientNet's, not the same-padding convs': its 32 plain SE
    # convs alone, quantized with the 49 same-padding convs left FP, give
    # ~14 dB as well.
    for value in (sqnr, resnet):
        assert math.isfinite(value) and 10.0 <= value <= 40.0, value
