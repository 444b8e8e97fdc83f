# Quantize an upstream mmseg config (Segformer MiT-B0, ADE20K) at W8A8.
#   python tools/test.py \
#       configs/mmseg/segformer_mit-b0_8xb2-160k_ade20k-512x512_w8a8.py \
#       segformer_mit-b0_512x512_160k_ade20k_<...>.pth --fp-baseline
_base_ = [
    'mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py',
    '../quant/w8a8.py',
]
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
test_cfg = dict(type='mmptq.QuantTestLoop')
quant_cfg = dict(calib=dict(num_samples=32, batch_size=1, split='train'))
