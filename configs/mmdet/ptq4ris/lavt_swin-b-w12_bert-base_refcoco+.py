# LAVT (Swin-B window 12, BERT-base, 480x480) on RefCOCO+, FP: the baseline of
# PTQ4RIS (Jiang et al., ICRA 2025), LAVT's released lavt_one weights
# (yz93/LAVT-RIS). Published oIoU (PTQ4RIS's oIoU table): val 63.38 /
# testA 68.73 / testB 56.08.
# Convert the released weights once (the BERT weights go into the converted
# file), then test; the val split here, testA, testB with --cfg-options
# test_dataloader.dataset.split=testA:
#   python tools/convert_lavt.py \
#       checkpoints/ptq4ris/<the refcoco+ lavt_one .pth> \
#       checkpoints/ptq4ris/lavt_swin-b-w12_bert-base_refcoco+.pth \
#       --config configs/mmdet/ptq4ris/lavt_swin-b-w12_bert-base_refcoco+.py
#   python tools/test.py \
#       configs/mmdet/ptq4ris/lavt_swin-b-w12_bert-base_refcoco+.py \
#       checkpoints/ptq4ris/lavt_swin-b-w12_bert-base_refcoco+.pth
# Quantized: the children of this file (W8A8, W6A6, W4A8, W4A4; generic and
# PTQ4RIS) or --quant-cfg <preset> on it.
_base_ = ['./lavt_swin-b-w12_bert-base_refcoco.py']
ref_files = dict(ann_file='refcoco+/instances.json',
                 split_file='refcoco+/refs(unc).p')
train_dataloader = dict(dataset=ref_files)
val_dataloader = dict(dataset=ref_files)
test_dataloader = val_dataloader
