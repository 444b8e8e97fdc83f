# Observer study (FQ-ViT / PTQ-for-iTPN) at W8A8, EMA row: per-batch
# min/max of the activations smoothed across batches,
# m <- m + 0.01 (m_batch - m). Otherwise minmax_w8a8.py.
_base_ = ['./minmax_w8a8.py']
_observer = dict(type='EMAMinMaxObserver', momentum=0.01)
quant_cfg = dict(
    act=dict(observer=_observer),
    norm=dict(observer=_observer),
    attn=dict(softmax=dict(observer=_observer)),
)
