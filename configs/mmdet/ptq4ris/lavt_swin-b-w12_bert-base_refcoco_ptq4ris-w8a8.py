# PTQ4RIS (Jiang et al., ICRA 2025) W8A8 of
# lavt_swin-b-w12_bert-base_refcoco.py: configs/quant/ptq4ris_w8a8.py (DRQ for
# post-Softmax / post-GELU activations, RORQ for the text encoder's Linear
# inputs, MSE-searched weights). Published oIoU on RefCOCO: val 72.33 /
# testA 75.38 / testB 68.26 (FP: val 72.72 / testA 75.74 / testB 68.56).
# Calibration: 32 train-split images through the test pipeline, one image (all
# its expressions) per batch.
#   python tools/test.py \
#       configs/mmdet/ptq4ris/lavt_swin-b-w12_bert-base_refcoco_ptq4ris-w8a8.py \
#       checkpoints/ptq4ris/lavt_swin-b-w12_bert-base_refcoco.pth --fp-baseline
_base_ = ['./lavt_swin-b-w12_bert-base_refcoco.py', '../../quant/ptq4ris_w8a8.py']
test_cfg = dict(type='mmptq.QuantTestLoop')
# as PTQ4RIS's reference (ptq4vit_utils/net_wrap.py): the pixel-word
# attention modules, language gates and decoder stay FP
quant_cfg = dict(
    calib=dict(num_samples=32, batch_size=1, split='train'),
    overrides=dict(lavt_fp_parts=dict(
        name=r'(fusions|gates|decoder)(\..*)?', skip=True)))
