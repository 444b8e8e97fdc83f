# BRECQ (Li et al., ICLR 2021) at W4A4: block by block, first the weight
# rounding (AdaRound), then the activation steps (LSQ), with the defaults of
# BRECQReconstruction (20,000 iterations per phase, batch 32), on 1,024
# calibration images as qdrop_w4a4.
_base_ = ['./w4a4.py']
quant_cfg = dict(
    reconstruction=dict(type='BRECQReconstruction'),
    calib=dict(num_samples=1024, batch_size=32),
)
