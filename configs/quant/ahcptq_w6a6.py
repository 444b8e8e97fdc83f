# AHCPTQ (Zhang et al., ICCV 2025) at W6A6, the reference's
# exp/config66.yaml: the recipe of ahcptq_w4a4.py (PTQ4SAM's BIG, AGQ and
# QDrop reconstruction; HLUQ for the MLPs' second Linear inputs, CAG with
# 4 groups for the projection inputs; 32 calibration images) with 6-bit
# weights and activations.
_base_ = ['./ahcptq_w4a4.py']
quant_cfg = dict(w_bits=6, a_bits=6)
