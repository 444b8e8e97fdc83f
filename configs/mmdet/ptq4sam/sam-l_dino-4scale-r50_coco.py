# SAM-L prompted by the same detector as sam-b_dino-4scale-r50_coco.py. SAM checkpoint,
# under checkpoints/ptq4sam/:
#   https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth
_base_ = './sam-b_dino-4scale-r50_coco.py'
model = dict(
    sam_variant='vit_l',
    sam_checkpoint='checkpoints/ptq4sam/sam_vit_l_0b3195.pth')
