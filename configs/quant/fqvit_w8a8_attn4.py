# FQ-ViT (Lin et al., IJCAI 2022) at W8/A8/Attn4: minmax_w8a8.py plus
#  - Power-of-Two Factor for the LayerNorm inputs: one layer-wise range,
#    per-channel steps s * 2^alpha_c, alpha_c in {0..3}, one zero-point;
#  - Log-Int-Softmax: logits quantized to 8 bits (MinMax), softmax with
#    I-BERT's integer exp, output log2-quantized to 4 bits.
_base_ = ['./minmax_w8a8.py']
quant_cfg = dict(
    norm=dict(_delete_=True, type='PTFQuantizer',
              observer=dict(type='MinMaxObserver')),
    attn=dict(
        softmax=dict(_delete_=True, type='LISQuantizer', input_bits=8,
                     observer=dict(type='MinMaxObserver')),
        softmax_bits=4),
)
