# PTQ4SAM W4A4 of sam-b_dino-4scale-r50_coco.py: the ptq4sam_w4a4 preset
# (configs/quant/ptq4sam_w4a4.py), 32 COCO train2017 calibration images
# through the test pipeline, one per batch; the prompt detector stays FP.
#   python tools/test.py \
#       configs/mmdet/ptq4sam/sam-b_dino-4scale-r50_coco_ptq4sam-w4a4.py \
#       --fp-baseline
_base_ = ['./sam-b_dino-4scale-r50_coco.py', '../../quant/ptq4sam_w4a4.py']
test_cfg = dict(type='mmptq.QuantTestLoop')
quant_cfg = dict(
    calib=dict(num_samples=32, batch_size=1, split='train'),
    overrides=dict(detector=dict(name=r'detector(\..*)?', skip=True)))
