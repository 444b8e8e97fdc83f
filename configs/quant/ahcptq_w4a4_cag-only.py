# AHCPTQ W4A4 ablation: ahcptq_w4a4.py without HLUQ (the reference's
# `ahcptq: hluq: False`): PTQ4SAM W4A4 (ptq4sam_w4a4.py) plus CAG with 4
# groups on the projection inputs; the MLPs' second Linear inputs keep the
# per-tensor uniform quantizer.
_base_ = ['./ptq4sam_w4a4.py']
quant_cfg = dict(
    overrides=dict(
        cag_projections=dict(
            name=r'(.*\.)?(qkv|q_proj|k_proj|v_proj|mlp\.lin1)',
            act=dict(type='CAGQuantizer', groups=4))))
