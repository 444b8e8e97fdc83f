# AHCPTQ W6A6 of sam-l_faster-rcnn-r50_coco.py: the ahcptq_w6a6 preset
# (configs/quant/ahcptq_w6a6.py: PTQ4SAM's BIG, AGQ and QDrop
# reconstruction, HLUQ for the MLPs' lin2 inputs, CAG with 4 groups for
# the projection inputs), 32 COCO train2017 calibration images through the
# test pipeline, one per batch; the prompt detector stays FP.
# Published: the AHCPTQ W6A6 row of Table 1 of arXiv:2503.03088 (not
# retrieved in this session).
#   python tools/test.py \
#       configs/mmdet/ptq4sam/sam-l_faster-rcnn-r50_coco_ahcptq-w6a6.py \
#       --fp-baseline
_base_ = ['./sam-l_faster-rcnn-r50_coco.py', '../../quant/ahcptq_w6a6.py']
test_cfg = dict(type='mmptq.QuantTestLoop')
quant_cfg = dict(
    calib=dict(num_samples=32, batch_size=1, split='train'),
    overrides=dict(detector=dict(name=r'detector(\..*)?', skip=True)))
