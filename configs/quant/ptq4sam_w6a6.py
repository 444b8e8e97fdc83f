# PTQ4SAM (Lv et al., CVPR 2024) at W6A6, the reference's
# exp/config66_recon.yaml: the recipe of ptq4sam_w4a4.py (BIG, AGQ, QDrop
# reconstruction, 32 calibration images) with 6-bit weights and activations.
_base_ = ['./ptq4sam_w4a4.py']
quant_cfg = dict(w_bits=6, a_bits=6)
