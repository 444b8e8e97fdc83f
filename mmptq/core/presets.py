"""Quantization presets: ``configs/quant/<name>.py`` files, shipped inside
the package (``mmptq/.mim/configs``, as mmdet / mmpretrain ship theirs),
or any config file path."""
import os.path as osp
from pathlib import Path
from typing import List

from mmengine.config import Config

from mmptq.registry import nearest_names

#: the package's data root: configs/ and the demo checkpoints/ (links to
#: the repository's folders in a source checkout, copies in a wheel)
PACKAGE_DATA = Path(__file__).resolve().parents[1] / '.mim'
PRESET_DIR = PACKAGE_DATA / 'configs' / 'quant'


def list_presets() -> List[str]:
    """Names of the presets shipped under configs/quant/."""
    return sorted(p.stem for p in PRESET_DIR.glob('*.py')
                  if not p.stem.startswith('_'))


def load_quant_cfg(name_or_path: str) -> dict:
    """The ``quant_cfg`` dict of a preset name (``'w4a4'``) or of a config
    file path; an unknown name is a ValueError listing the presets."""
    path = name_or_path
    if not osp.isfile(path):
        path = str(PRESET_DIR / f'{name_or_path}.py')
        if not osp.isfile(path):
            raise ValueError(
                f'unknown quantization preset {name_or_path!r}: not a file '
                f'and not one of {list_presets()} (nearest: '
                f'{nearest_names(name_or_path, list_presets())})')
    cfg = Config.fromfile(path)
    if 'quant_cfg' not in cfg:
        raise ValueError(f'{path} has no quant_cfg section')
    return cfg.quant_cfg.to_dict()
