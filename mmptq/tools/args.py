"""Argument groups shared by mmptq's command lines, importable without
torch or the OpenMMLab stack (``--help`` stays fast): argparse, mmengine's
``DictAction`` and the names of the shipped presets and demo models read
from the package's files."""
import argparse
import ast
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from mmengine.config import DictAction

import mmptq

#: the package: its shipped configs (``.mim/configs``) and apis sources
PACKAGE_DIR = Path(__file__).resolve().parents[1]
PRESET_DIR = PACKAGE_DIR / '.mim' / 'configs' / 'quant'


def preset_names() -> List[str]:
    """The shipped presets (``mmptq.core.list_presets`` without importing
    it)."""
    return sorted(p.stem for p in PRESET_DIR.glob('*.py')
                  if not p.stem.startswith('_'))


def demo_names() -> List[str]:
    """The keys of ``mmptq.apis.benchmark.DEMO_MODELS``, read from its
    source (importing it would import torch and the OpenMMLab stack)."""
    path = PACKAGE_DIR / 'apis' / 'benchmark.py'
    tree = ast.parse(path.read_text(encoding='utf-8'))
    for node in tree.body:
        target = getattr(node, 'target', None) or \
            (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == 'DEMO_MODELS' \
                and isinstance(node.value, ast.Dict):
            return [ast.literal_eval(k) for k in node.value.keys]
    return []


def dataset_defaults() -> Tuple[List[str], Dict[str, Tuple[int, int]]]:
    """``DATASETS`` and ``DEFAULT_NUM`` of ``mmptq.datasets.builders``,
    read from its source (importing it would import torch)."""
    path = PACKAGE_DIR / 'datasets' / 'builders.py'
    found = {}
    for node in ast.parse(path.read_text(encoding='utf-8')).body:
        if isinstance(node, ast.Assign) and isinstance(
                node.targets[0], ast.Name) and node.targets[0].id in (
                    'DATASETS', 'DEFAULT_NUM'):
            found[node.targets[0].id] = ast.literal_eval(node.value)
    return list(found['DATASETS']), dict(found['DEFAULT_NUM'])


def load_stack() -> None:
    """Import torch, the OpenMMLab stack and all of mmptq (registering its
    loops, quantizers, ...): after the arguments are parsed. pycocotools'
    printout goes to DEBUG log records (mmdet logs the COCO metrics)."""
    mmptq.import_all()
    from mmptq.utils import install_pycocotools_capture
    install_pycocotools_capture()


class StoreOnce(argparse.Action):
    """``store``, but an option given twice is an error (argparse keeps the
    last silently)."""

    def __call__(self, parser: argparse.ArgumentParser,
                 namespace: argparse.Namespace, values: object,
                 option_string: Optional[str] = None) -> None:
        seen = getattr(namespace, f'_{self.dest}_given', None)
        if seen is not None:
            raise argparse.ArgumentError(
                self, f'given twice ({seen!r}, then {values!r}); give it '
                'once')
        setattr(namespace, f'_{self.dest}_given', values)
        setattr(namespace, self.dest, values)


def add_quant_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--quant-cfg', action=StoreOnce,
                        help='a preset name (' + ', '.join(preset_names())
                        + ') or the path of a config with a quant_cfg '
                        'section')
    parser.add_argument('--w-bits', type=int, action=StoreOnce,
                        help='override weight bits')
    parser.add_argument('--a-bits', type=int, action=StoreOnce,
                        help='override activation bits')
    parser.add_argument('--calib-samples', type=int, action=StoreOnce,
                        help='number of calibration images')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='load checkpoints with weights_only=False '
                        '(only for files you trust)')


def add_common_args(parser: argparse.ArgumentParser,
                    checkpoint: str = 'required') -> None:
    """config, checkpoint ('required', 'optional' or 'none') and the
    Runner's options."""
    parser.add_argument('config', help='config file path')
    if checkpoint == 'optional':
        parser.add_argument(
            'checkpoint', nargs='?',
            help='checkpoint file; leave it out for a model that loads its '
            'weights when it is built (e.g. BoxPromptSAM: SAM and detector '
            'checkpoints in the config)')
    elif checkpoint == 'required':
        parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where logs and results go')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, key=value')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse(parser: argparse.ArgumentParser,
          argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line; torch.distributed.launch passes
    --local-rank, torchrun sets LOCAL_RANK."""
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def description(doc: Optional[str]) -> str:
    """A tool's ``--help`` description: the first paragraph of its
    docstring."""
    return (doc or '').split('\n\n')[0]


def run_converter(doc: Optional[str], release: str,
                  argv: Optional[Sequence[str]] = None) -> None:
    """The command line of a checkpoint converter: SRC, DST, ``--config``,
    ``--unsafe-load``, then ``mmptq.apis.convert.convert_<release>_
    checkpoint`` (``release``: 'itpn', 'lavt')."""
    parser = argparse.ArgumentParser(description=description(doc))
    parser.add_argument('src', help='the released checkpoint')
    parser.add_argument('dst', help='where to write the converted one')
    parser.add_argument('--config', help='check against this config')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='load SRC with weights_only=False (only for '
                        'files you trust)')
    args = parser.parse_args(argv)
    load_stack()
    from mmptq.apis import convert
    getattr(convert, f'convert_{release}_checkpoint')(
        args.src, args.dst, config=args.config, unsafe=args.unsafe_load)
