# Quantize an upstream mmpretrain config (DeiT-S, ImageNet) at W4A4.
#   python tools/test.py configs/mmpretrain/deit-small_4xb256_in1k_w4a4.py \
#       deit-small_3rdparty_pt-4xb256_in1k_<...>.pth --fp-baseline
_base_ = [
    'mmpretrain::deit/deit-small_4xb256_in1k.py',
    '../quant/w4a4.py',
]
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
test_cfg = dict(type='mmptq.QuantTestLoop')
quant_cfg = dict(calib=dict(num_samples=32, batch_size=8, split='train'))
