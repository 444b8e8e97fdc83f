# Observer study (FQ-ViT / PTQ-for-iTPN) at W8A8, Percentile row: per-batch
# 1e-5 / 1 - 1e-5 quantiles of the activations, EMA-smoothed across batches
# (momentum 0.01). Otherwise minmax_w8a8.py.
_base_ = ['./minmax_w8a8.py']
_observer = dict(type='PercentileObserver', percentile=0.99999,
                 momentum=0.01)
quant_cfg = dict(
    act=dict(observer=_observer),
    norm=dict(observer=_observer),
    attn=dict(softmax=dict(observer=_observer)),
)
