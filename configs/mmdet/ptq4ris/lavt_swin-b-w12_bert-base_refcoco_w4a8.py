# W4A8 of lavt_swin-b-w12_bert-base_refcoco.py with mmptq's generic recipe
# (configs/quant/w4a8.py: per-channel MSE-searched weights, per-tensor
# percentile-searched activations, log-sqrt2 softmax). Not a row of the
# PTQ4RIS tables; their PTQ4RIS W4A8 oIoU on RefCOCO: val 71.48 / testA 74.60
# / testB 66.53 (FP: val 72.72 / testA 75.74 / testB 68.56).
# Calibration: 32 train-split images through the test pipeline, one image (all
# its expressions) per batch.
#   python tools/test.py \
#       configs/mmdet/ptq4ris/lavt_swin-b-w12_bert-base_refcoco_w4a8.py \
#       checkpoints/ptq4ris/lavt_swin-b-w12_bert-base_refcoco.pth --fp-baseline
_base_ = ['./lavt_swin-b-w12_bert-base_refcoco.py', '../../quant/w4a8.py']
test_cfg = dict(type='mmptq.QuantTestLoop')
# as PTQ4RIS's reference (ptq4vit_utils/net_wrap.py): the pixel-word
# attention modules, language gates and decoder stay FP
quant_cfg = dict(
    calib=dict(num_samples=32, batch_size=1, split='train'),
    overrides=dict(lavt_fp_parts=dict(
        name=r'(fusions|gates|decoder)(\..*)?', skip=True)))
