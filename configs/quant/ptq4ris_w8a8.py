# PTQ4RIS (Jiang et al., ICRA 2025) at W8A8: ptq4ris_w4a4.py (DRQ for the
# post-Softmax / post-GELU activations, RORQ for the text encoder's Linear
# inputs, MSE-searched weights and activations, 32 calibration samples, no
# reconstruction, as the reference's ptq4ris.py) with 8-bit weights and
# 8-bit activations (the reference's --n_bits_w 8 --n_bits_a 8).
_base_ = ['./ptq4ris_w4a4.py']
quant_cfg = dict(w_bits=8, a_bits=8)
