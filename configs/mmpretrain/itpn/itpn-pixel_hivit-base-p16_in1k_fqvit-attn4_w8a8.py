# FQ-ViT W8/A8/Attn4 (Power-of-Two Factor + Log-Int-Softmax) on
# itpn-pixel_hivit-base-p16_in1k.py, calibrated on 1,000 ImageNet train images:
#   python tools/test.py configs/mmpretrain/itpn/itpn-pixel_hivit-base-p16_in1k_fqvit-attn4_w8a8.py \
#       CHECKPOINT --fp-baseline
_base_ = ['./itpn-pixel_hivit-base-p16_in1k.py', '../../quant/fqvit_w8a8_attn4.py']
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
test_cfg = dict(type='mmptq.QuantTestLoop')
