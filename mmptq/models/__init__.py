"""Model code mmdet / mmpretrain lack, registered in mmptq's ``MODELS``
(imported on first use: ``dict(type='mmptq.iTPNFinetuneHiViT')``,
``dict(type='mmptq.BoxPromptSAM')``), the key maps of released
checkpoints (``convert_itpn``) and the state-dict variants of shipped
checkpoints (``variants``: ``sam-signflip``)."""
from .box_prompt_sam import BoxPromptSAM
from .itpn import iTPNFinetuneHiViT
from .variants import VARIANTS, apply_variant, register_variant

__all__ = ['BoxPromptSAM', 'iTPNFinetuneHiViT', 'VARIANTS', 'apply_variant',
           'register_variant']
