# QDrop (Wei et al., ICLR 2022) at W4A4: after calibration (the w4a4
# recipe), every block is reconstructed in forward order, learning the
# weight rounding (AdaRound) and the activation steps (LSQ) jointly while
# each activation is kept FP with p = 0.5. QDrop's defaults: 20,000
# iterations per block, minibatches of 32, 1,024 calibration images.
# On detectors at full resolution use fewer images, e.g.
#   --calib-samples 32 --cfg-options quant_cfg.reconstruction.iters=2000
_base_ = ['./w4a4.py']
quant_cfg = dict(
    reconstruction=dict(
        type='QDropReconstruction',
        iters=20000,
        batch_size=32,
        lr=4e-5,
        drop_prob=0.5),
    calib=dict(num_samples=1024, batch_size=32),
)
