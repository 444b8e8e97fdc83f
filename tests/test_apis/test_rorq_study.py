"""The RORQ study of the text encoder (mmptq.apis.rorq_study) on a tiny
random BertModel with a planted outlier channel: RORQ separates it and
beats plain per-tensor min/max at 4 bits."""
import torch
from transformers import BertConfig, BertModel

from mmptq.apis.rorq_study import (METHODS, rorq_text_encoder_study,
                                   study_quant_cfg, text_batches)

QUERY = 'encoder.layer.0.attention.self.query'


def tiny_bert() -> BertModel:
    """2 layers, 32-d, embeddings.LayerNorm's γ_5 × 50: channel 5 of the
    first layer's Linear inputs is an outlier (nothing compensates it)."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=32,
                     attn_implementation='eager')
    model = BertModel(cfg).eval()
    with torch.no_grad():
        model.embeddings.LayerNorm.weight[5] *= 50
    return model


def batches(num: int, seed: int, batch_size: int = 4):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (num, 12), generator=g)
    lengths = torch.randint(4, 13, (num, ), generator=g)
    mask = (torch.arange(12)[None] < lengths[:, None]).long()
    return text_batches(ids * mask, mask, batch_size)


def test_rorq_beats_per_tensor_on_an_outlier_channel():
    methods = {m: METHODS[m] for m in ('plain minmax', 'RORQ')}
    study = rorq_text_encoder_study(
        tiny_bert(), batches(16, 0), batches(16, 1), bits=(4, ),
        methods=methods)
    assert study.groups(QUERY, 4) >= 2
    layer = next(r for r in study.layers if r['name'] == QUERY)
    assert layer['ratio'] > 10  # the planted outlier is there
    # one group (outlier_groups broken) would be per-tensor min/max: equal
    assert study.sqnr(4, 'RORQ') > study.sqnr(4, 'plain minmax') + 2
    assert layer['input_sqnr'][(4, 'RORQ')] > \
        layer['input_sqnr'][(4, 'plain minmax')] + 2
    assert 'RORQ dB' in study.markdown()


def test_study_cfg_keeps_weights_and_attention_fp():
    cfg = study_quant_cfg(4, dict(type='OutlierReorderQuantizer'))
    assert cfg['w_bits'] == 16 and cfg['a_bits'] == 4
    assert cfg['attn'] == dict(matmul=False, softmax=None)
