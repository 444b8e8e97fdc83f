# RepQ-ViT's W4A4 recipe (scale reparameterization, log-sqrt2 softmax) with
# QDrop block reconstruction on top (the combination PTQ4SAM builds on).
_base_ = ['./repq-vit_w4a4.py']
quant_cfg = dict(
    reconstruction=dict(
        type='QDropReconstruction',
        iters=20000,
        batch_size=32,
        lr=4e-5,
        drop_prob=0.5),
    calib=dict(num_samples=1024, batch_size=32),
)
