# APHQ-ViT (Wu et al., CVPR 2025) at W4A4: RepQ-ViT's W4A4 recipe (the
# reference detection code calibrates with RepQ-ViT's reparameterization)
# and then block reconstruction as QDrop (rounding and activation steps
# jointly, drop p = 0.5, 20,000 iterations per block, minibatches of 32)
# with the average-perturbation-Hessian weighted loss (APHQReconstruction,
# delta 1e-3, T = 20), on 1,024 calibration images (the reference's
# classification setting). The paper's MLP Reconstruction (GELU -> ReLU) is
# not applied: it changes the model.
_base_ = ['./repq-vit_w4a4.py']
quant_cfg = dict(
    reconstruction=dict(type='APHQReconstruction'),
    calib=dict(num_samples=1024, batch_size=32),
)
