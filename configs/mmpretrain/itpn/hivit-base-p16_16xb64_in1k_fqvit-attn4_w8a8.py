# FQ-ViT W8/A8/Attn4 (Power-of-Two Factor + Log-Int-Softmax) on mmpretrain's
# HiViT-B ImageNet classifier, calibrated on 1,000 train images:
#   python tools/test.py \
#       configs/mmpretrain/itpn/hivit-base-p16_16xb64_in1k_fqvit-attn4_w8a8.py \
#       CHECKPOINT --fp-baseline
# The observer study on it: tools/benchmark.py --model
#   mmpretrain::hivit/hivit-base-p16_16xb64_in1k.py CHECKPOINT --quant-cfg
#   minmax_w8a8 ema_w8a8 percentile_w8a8 omse_w8a8 fqvit_w8a8_attn4
_base_ = [
    'mmpretrain::hivit/hivit-base-p16_16xb64_in1k.py',
    '../../quant/fqvit_w8a8_attn4.py',
]
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
test_cfg = dict(type='mmptq.QuantTestLoop')
