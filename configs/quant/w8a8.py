_base_ = ['./_base_generic.py']
quant_cfg = dict(w_bits=8, a_bits=8)
