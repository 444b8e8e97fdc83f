# Observer study (FQ-ViT / PTQ-for-iTPN) at W8A8, OMSE row: the min/max of
# all calibration batches shrunk by (1 - 0.01 i), i = 0..89, keeping the
# lowest L2 error on the last batch (running_range=True, as FQ-ViT).
# Otherwise minmax_w8a8.py.
_base_ = ['./minmax_w8a8.py']
_observer = dict(type='OMSEObserver', running_range=True)
quant_cfg = dict(
    act=dict(observer=_observer),
    norm=dict(observer=_observer),
    attn=dict(softmax=dict(observer=_observer)),
)
