# BRECQ (Li et al., ICLR 2021) at W4A4: block by block, first the weight
# rounding (AdaRound, activations FP), then the activation steps (LSQ).
# Same budget as qdrop_w4a4 (20,000 iterations per phase, batch 32,
# 1,024 calibration images).
_base_ = ['./w4a4.py']
quant_cfg = dict(
    reconstruction=dict(
        type='BRECQReconstruction', iters=20000, batch_size=32, lr=4e-5),
    calib=dict(num_samples=1024, batch_size=32),
)
