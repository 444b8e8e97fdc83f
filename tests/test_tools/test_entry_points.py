"""The command lines parse their arguments before importing torch and the
OpenMMLab stack: ``--help`` of every tool (``tools/*.py`` in the checkout,
``python -m mmptq.tools.<name>``) imports no torch; the names they list
without importing are those of the modules they stand for."""
import os
import os.path as osp
import subprocess
import sys
from typing import List

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = sorted(
    name[:-3] for name in os.listdir(osp.join(ROOT, 'mmptq', 'tools'))
    if name.endswith('.py') and name not in ('__init__.py', 'args.py'))


def imported(cmd: List[str]) -> List[str]:
    """The modules ``cmd`` (a Python command line) imports, from
    ``-X importtime``; fails unless it exits 0."""
    proc = subprocess.run([sys.executable, '-X', 'importtime'] + cmd,
                          cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith('usage: '), proc.stdout[:500]
    return [line.rsplit('|', 1)[-1].strip()
            for line in proc.stderr.splitlines()
            if line.startswith('import time:')]


def test_every_tool_has_a_checkout_shim():
    assert TOOLS and all(
        osp.isfile(osp.join(ROOT, 'tools', f'{name}.py')) for name in TOOLS)


@pytest.mark.parametrize('tool', TOOLS)
def test_help_imports_no_torch(tool):
    for cmd in ([osp.join('tools', f'{tool}.py'), '--help'],
                ['-m', f'mmptq.tools.{tool}', '--help']):
        heavy = [m for m in imported(cmd)
                 if m.split('.')[0] in ('torch', 'mmdet', 'mmcv')]
        assert not heavy, f'{cmd} imports {heavy[:5]}'


def test_names_read_without_importing():
    from mmptq.apis.benchmark import DEMO_MODELS
    from mmptq.core import list_presets
    from mmptq.tools.args import demo_names, preset_names
    assert preset_names() == list_presets()
    assert demo_names() == list(DEMO_MODELS)


def test_deferred_import_registers_after_parsing():
    """A tool's process: ``import mmptq`` deferred, then ``import_all``
    registers mmptq's loops (what ``custom_imports=['mmptq']`` relies
    on)."""
    code = ('import sys; import mmptq; '
            'assert "torch" not in sys.modules; '
            'assert "MMPTQ_DEFER_IMPORTS" not in __import__("os").environ; '
            'mmptq.import_all(); '
            'from mmengine.registry import LOOPS; '
            'from mmptq.registry import LOOPS as Q; '
            'assert "QuantTestLoop" in Q.module_dict; '
            'print(mmptq.quantize_model.__name__)')
    proc = subprocess.run(
        [sys.executable, '-c', code], cwd=ROOT, capture_output=True,
        text=True, timeout=300,
        env=dict(os.environ, MMPTQ_DEFER_IMPORTS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == 'quantize_model'


def test_every_tool_has_a_console_script():
    with open(osp.join(ROOT, 'setup.py'), encoding='utf-8') as f:
        source = f.read()
    block = source[source.index("'console_scripts'"):]
    block = block[:block.index(']}')]
    assert all(f"'{name}'" in block for name in TOOLS), (TOOLS, block)
