"""Quantization presets: ``configs/quant/<name>.py`` files, shipped inside
the package (``mmptq/.mim/configs``, as mmdet / mmpretrain ship theirs),
or any config file path."""
import ast
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


def _check_syntax(path: str) -> None:
    """A Python syntax error in the config file ``path`` as a ValueError
    that names the file and the line (mmengine's parse names neither)."""
    with open(path, encoding='utf-8') as f:
        source = f.read()
    try:
        ast.parse(source, filename=path)
    except SyntaxError as e:
        text = (e.text or '').strip()
        raise ValueError(f'syntax error in {path}, line {e.lineno}: {e.msg}'
                         + (f' (in: {text})' if text else '')) from None


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
    _check_syntax(path)
    try:
        cfg = Config.fromfile(path)
    except SyntaxError as e:  # in a file it inherits from (_base_)
        raise ValueError(f'syntax error in a file that {path} inherits '
                         f'from (_base_), line {e.lineno}: {e.msg}') from None
    if 'quant_cfg' not in cfg:
        raise ValueError(f'{path} has no quant_cfg section')
    return cfg.quant_cfg.to_dict()
