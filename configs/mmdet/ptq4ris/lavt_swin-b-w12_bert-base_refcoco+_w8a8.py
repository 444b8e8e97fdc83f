# W8A8 of lavt_swin-b-w12_bert-base_refcoco+.py with mmptq's generic recipe
# (configs/quant/w8a8.py: per-channel MSE-searched weights, per-tensor
# percentile-searched activations, log-sqrt2 softmax). Not a row of the
# PTQ4RIS tables; their PTQ4RIS W8A8 oIoU on RefCOCO+: val 63.32 / testA 68.72
# / testB 56.07 (FP: val 63.38 / testA 68.73 / testB 56.08).
# Calibration: 32 train-split images through the test pipeline, one image (all
# its expressions) per batch.
#   python tools/test.py \
#       configs/mmdet/ptq4ris/lavt_swin-b-w12_bert-base_refcoco+_w8a8.py \
#       checkpoints/ptq4ris/lavt_swin-b-w12_bert-base_refcoco+.pth --fp-baseline
_base_ = ['./lavt_swin-b-w12_bert-base_refcoco+.py', '../../quant/w8a8.py']
test_cfg = dict(type='mmptq.QuantTestLoop')
# as PTQ4RIS's reference (ptq4vit_utils/net_wrap.py): the pixel-word
# attention modules, language gates and decoder stay FP
quant_cfg = dict(
    calib=dict(num_samples=32, batch_size=1, split='train'),
    overrides=dict(lavt_fp_parts=dict(
        name=r'(fusions|gates|decoder)(\..*)?', skip=True)))
