"""Model code mmdet / mmpretrain lack, registered in mmptq's ``MODELS``
(imported on first use: ``dict(type='mmptq.iTPNFinetuneHiViT')``), and
the key maps of released checkpoints (``convert_itpn``)."""
from .itpn import iTPNFinetuneHiViT

__all__ = ['iTPNFinetuneHiViT']
