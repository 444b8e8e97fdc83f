"""Model code mmdet / mmpretrain lack, registered in mmptq's ``MODELS``
(imported on first use: ``dict(type='mmptq.iTPNFinetuneHiViT')``,
``dict(type='mmptq.BoxPromptSAM')``), and the key maps of released
checkpoints (``convert_itpn``)."""
from .box_prompt_sam import BoxPromptSAM
from .itpn import iTPNFinetuneHiViT

__all__ = ['BoxPromptSAM', 'iTPNFinetuneHiViT']
