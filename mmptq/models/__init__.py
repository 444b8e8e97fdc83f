"""Model code mmdet / mmpretrain lack, registered in mmptq's ``MODELS``
(imported on first use: ``dict(type='mmptq.iTPNFinetuneHiViT')``)."""
from .itpn import iTPNFinetuneHiViT

__all__ = ['iTPNFinetuneHiViT']
