# QDrop (Wei et al., ICLR 2022) block reconstruction with its defaults
# (QDropReconstruction: rounding (AdaRound) and activation steps (LSQ, Adam
# 4e-5, cosine) learned jointly, activations kept FP with p = 0.5 while
# fitting; 20,000 iterations per block, minibatches of 32) on 1,024
# calibration images. Shared by the presets that add QDrop to a recipe (not
# a preset itself).
qdrop = dict(type='QDropReconstruction')
qdrop_calib = dict(num_samples=1024, batch_size=32)
