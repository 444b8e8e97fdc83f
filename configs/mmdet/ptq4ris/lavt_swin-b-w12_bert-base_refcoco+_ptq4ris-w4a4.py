# PTQ4RIS (Jiang et al., ICRA 2025) W4A4 of
# lavt_swin-b-w12_bert-base_refcoco+.py: configs/quant/ptq4ris_w4a4.py (DRQ
# for post-Softmax / post-GELU activations, RORQ for the text encoder's Linear
# inputs, MSE-searched weights). Published oIoU on RefCOCO+: val 59.44 /
# testA 64.26 / testB 51.87 (FP: val 63.38 / testA 68.73 / testB 56.08).
# Calibration: 32 train-split images through the test pipeline, one image (all
# its expressions) per batch.
#   python tools/test.py \
#       configs/mmdet/ptq4ris/lavt_swin-b-w12_bert-base_refcoco+_ptq4ris-w4a4.py \
#       checkpoints/ptq4ris/lavt_swin-b-w12_bert-base_refcoco+.pth --fp-baseline
_base_ = ['./lavt_swin-b-w12_bert-base_refcoco+.py', '../../quant/ptq4ris_w4a4.py']
test_cfg = dict(type='mmptq.QuantTestLoop')
# as PTQ4RIS's reference (ptq4vit_utils/net_wrap.py): the pixel-word
# attention modules, language gates and decoder stay FP
quant_cfg = dict(
    calib=dict(num_samples=32, batch_size=1, split='train'),
    overrides=dict(lavt_fp_parts=dict(
        name=r'(fusions|gates|decoder)(\..*)?', skip=True)))
