# PTQ4RIS (Jiang et al., ICRA 2025) W6A6 of
# lavt_swin-b-w12_bert-base_refcocog-umd.py: configs/quant/ptq4ris_w6a6.py
# (DRQ for post-Softmax / post-GELU activations, RORQ for the text encoder's
# Linear inputs, MSE-searched weights). Published oIoU on G-Ref (UMD
# partition): val 62.01 / test 63.47 (FP: val 62.65 / test 64.10).
# Calibration: 32 train-split images through the test pipeline, one image (all
# its expressions) per batch.
#   python tools/test.py \
#       configs/mmdet/ptq4ris/lavt_swin-b-w12_bert-base_refcocog-umd_ptq4ris-w6a6.py \
#       checkpoints/ptq4ris/lavt_swin-b-w12_bert-base_refcocog-umd.pth --fp-baseline
_base_ = ['./lavt_swin-b-w12_bert-base_refcocog-umd.py', '../../quant/ptq4ris_w6a6.py']
test_cfg = dict(type='mmptq.QuantTestLoop')
# as PTQ4RIS's reference (ptq4vit_utils/net_wrap.py): the pixel-word
# attention modules, language gates and decoder stay FP
quant_cfg = dict(
    calib=dict(num_samples=32, batch_size=1, split='train'),
    overrides=dict(lavt_fp_parts=dict(
        name=r'(fusions|gates|decoder)(\..*)?', skip=True)))
