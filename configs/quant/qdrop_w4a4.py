# QDrop at W4A4: the w4a4 recipe, then every block reconstructed in forward
# order (configs/quant/_qdrop.py). On detectors at full resolution use
# fewer images and iterations, e.g.
#   --calib-samples 32 --cfg-options quant_cfg.reconstruction.iters=2000
_base_ = ['./w4a4.py', './_qdrop.py']
quant_cfg = dict(reconstruction={{_base_.qdrop}}, calib={{_base_.qdrop_calib}})
