# PTQ4SAM ablation: ptq4sam_w4a4.py without AGQ. The post-Softmax activation
# gets the activation quantizer (uniform, per tensor, mean of the per-batch
# min / max), as the
# reference does with AGQ off.
_base_ = ['./ptq4sam_w4a4.py']
quant_cfg = dict(
    attn=dict(
        softmax=dict(
            _delete_=True,
            type='UniformQuantizer',
            granularity='tensor',
            observer=dict(type='AvgMinMaxObserver'))))
