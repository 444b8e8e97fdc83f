# PTQ4SAM ablation: ptq4sam_w4a4.py without BIG (no sign folding of bimodal
# keys).
_base_ = ['./ptq4sam_w4a4.py']
quant_cfg = dict(transforms=[])
