# SAM-H prompted by the same detector as sam-b_yolox-l_coco.py. SAM checkpoint,
# under checkpoints/ptq4sam/:
#   https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth
_base_ = './sam-b_yolox-l_coco.py'
model = dict(
    sam_variant='vit_h',
    sam_checkpoint='checkpoints/ptq4sam/sam_vit_h_4b8939.pth')
