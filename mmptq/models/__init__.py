"""Model code mmdet / mmpretrain lack, registered in mmptq's ``MODELS``
(imported on first use: ``dict(type='mmptq.iTPNFinetuneHiViT')``,
``dict(type='mmptq.BoxPromptSAM')``, ``dict(type='mmptq.LAVT')``), the key
maps of released checkpoints (``convert_itpn``, ``convert_lavt``) and the
state-dict variants of shipped checkpoints (``variants``: ``sam-signflip``)."""
from .box_prompt_sam import BoxPromptSAM
from .itpn import iTPNFinetuneHiViT
from .lavt import LAVT
from .variants import VARIANTS, apply_variant, register_variant

__all__ = ['BoxPromptSAM', 'iTPNFinetuneHiViT', 'LAVT', 'VARIANTS',
           'apply_variant', 'register_variant']
