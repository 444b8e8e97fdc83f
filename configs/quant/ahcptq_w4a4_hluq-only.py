# AHCPTQ W4A4 ablation: ahcptq_w4a4.py without CAG (the reference's
# `ahcptq: cag: False`): PTQ4SAM W4A4 (ptq4sam_w4a4.py) plus HLUQ on the
# MLPs' second Linear inputs; the projection inputs keep the per-tensor
# uniform quantizer.
_base_ = ['./ptq4sam_w4a4.py']
quant_cfg = dict(
    overrides=dict(
        hluq_post_gelu=dict(
            name=r'(.*\.)?(mlp\.lin2|ffn\.layers\.1)',
            act=dict(type='HLUQuantizer'))))
