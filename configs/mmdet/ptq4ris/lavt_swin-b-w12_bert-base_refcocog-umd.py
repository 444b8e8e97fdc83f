# LAVT (Swin-B window 12, BERT-base, 480x480) on G-Ref (UMD partition), FP:
# the baseline of PTQ4RIS (Jiang et al., ICRA 2025), LAVT's released lavt_one
# weights (yz93/LAVT-RIS). Published oIoU (PTQ4RIS's oIoU table): val 62.65 /
# test 64.10.
# Convert the released weights once (the BERT weights go into the converted
# file), then test; the val split here, test with --cfg-options
# test_dataloader.dataset.split=test:
#   python tools/convert_lavt.py \
#       checkpoints/ptq4ris/<the gref_umd lavt_one .pth> \
#       checkpoints/ptq4ris/lavt_swin-b-w12_bert-base_refcocog-umd.pth \
#       --config configs/mmdet/ptq4ris/lavt_swin-b-w12_bert-base_refcocog-umd.py
#   python tools/test.py \
#       configs/mmdet/ptq4ris/lavt_swin-b-w12_bert-base_refcocog-umd.py \
#       checkpoints/ptq4ris/lavt_swin-b-w12_bert-base_refcocog-umd.pth
# Quantized: the children of this file (W8A8, W6A6, W4A8, W4A4; generic and
# PTQ4RIS) or --quant-cfg <preset> on it.
_base_ = ['./lavt_swin-b-w12_bert-base_refcoco.py']
ref_files = dict(ann_file='refcocog/instances.json',
                 split_file='refcocog/refs(umd).p')
train_dataloader = dict(dataset=ref_files)
val_dataloader = dict(dataset=ref_files)
test_dataloader = val_dataloader
