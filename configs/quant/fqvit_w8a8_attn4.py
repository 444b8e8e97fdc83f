# FQ-ViT (Lin et al., IJCAI 2022) at W8/A8/Attn4: minmax_w8a8.py plus
#  - Power-of-Two Factor for the LayerNorm inputs: one layer-wise range,
#    per-channel steps s * 2^alpha_c, alpha_c in {0..3}, one zero-point;
#  - Log-Int-Softmax: logits quantized to 8 bits (MinMax), softmax with
#    I-BERT's integer exp, output log2-quantized to 4 bits. The exp gets
#    the 8-bit logits shifted left by 4 bits (exp_shift=4): FQ-ViT's code
#    applies it to the 8-bit logits directly, where ln 2 is represented by
#    floor(ln2 / S) steps and, for coarse steps S, the integer exp computes
#    exp(0.8x) instead of exp(x) (demo HiViT: -2.8 vs -1.0 top-1 on 500
#    images); exp_shift=0 is the published behaviour.
_base_ = ['./minmax_w8a8.py']
quant_cfg = dict(
    norm=dict(_delete_=True, type='PTFQuantizer',
              observer=dict(type='MinMaxObserver')),
    attn=dict(
        softmax=dict(_delete_=True, type='LISQuantizer', input_bits=8,
                     exp_shift=4, observer=dict(type='MinMaxObserver')),
        softmax_bits=4),
)
