"""``make install``'s torch and torchvision logic, without network: the
pip command lines of a dry run (``make -n``) for each ``TORCH_INDEX``, and
the torch -> torchvision version map."""
import contextlib
import importlib.metadata as m
import io
import os.path as osp
import re
import shutil
import subprocess
import sys
from typing import Dict

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
pytestmark = pytest.mark.skipif(shutil.which('make') is None,
                                reason='needs make')


def dry_run(**variables: str) -> str:
    """The commands of ``make -n install`` with ``variables`` (no venv:
    PYTHON=python3, nothing is run)."""
    args = [f'{k}={v}' for k, v in dict(PYTHON='python3', **variables).items()]
    proc = subprocess.run(['make', '-n', 'install'] + args, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def torch_install_lines(text: str) -> Dict[str, str]:
    """The three ways torch is installed: 'local' (a wheel in pip's
    find-links), 'index' (TORCH_INDEX) and the 'check' of a local wheel."""
    lines = [line.strip(' \\;') for line in text.splitlines()
             if 'pip install' in line and "'torch" in line]
    assert len(lines) == 3, lines
    check, local, index = lines
    return dict(check=check, local=local, index=index)


@pytest.mark.parametrize('index', ['cpu', 'cu121', 'cu126'])
def test_pytorch_index(index):
    lines = torch_install_lines(dry_run(TORCH_INDEX=index))
    spec = f"'torch==2.13.0+{index}'"
    assert f'pip install -q --dry-run --no-index --no-deps {spec} ' in \
        lines['check'], lines['check']
    assert lines['local'].endswith(f'pip install -q  {spec}')
    assert lines['index'].endswith(
        f'pip install -q --index-url https://download.pytorch.org/whl/{index}'
        f'  {spec}'), lines['index']


def test_default_is_the_cpu_build():
    text = dry_run()
    assert 'TORCH_INDEX=cpu' in text
    assert torch_install_lines(text)['index'].endswith(
        "--index-url https://download.pytorch.org/whl/cpu  'torch==2.13.0+cpu'")


@pytest.mark.parametrize('index', ['none', 'pypi'])
def test_pips_own_index(index):
    lines = torch_install_lines(dry_run(TORCH_INDEX=index))
    assert all('--index-url' not in line for line in lines.values())
    assert lines['index'].endswith("pip install -q   'torch==2.13.0'")


def test_unpinned_spec_and_extra_args():
    lines = torch_install_lines(dry_run(
        TORCH_SPEC='torch>=2.1', TORCH_PIP_ARGS='--no-cache-dir'))
    assert lines['index'].endswith(
        "--index-url https://download.pytorch.org/whl/cpu --no-cache-dir "
        "'torch>=2.1'"), lines['index']


def test_installed_torch_is_kept_first():
    """The installed torch is checked before any pip command."""
    text = dry_run()
    assert text.index('"$SATISFIED" \'torch==2.13.0\'') < \
        text.index('pip install -q --dry-run')


def exported(name: str) -> str:
    proc = subprocess.run(
        ['make', '-s', '--eval', f'show-it: ; @echo "$${name}"', 'show-it',
         'PYTHON=python3'], cwd=ROOT, capture_output=True, text=True,
        timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize('torch_version,expected', [
    ('2.13.0+cpu', 'torchvision==0.28.0+cpu'),
    ('2.13.0', 'torchvision==0.28.0'),
    ('2.5.1+cu121', 'torchvision==0.20.1+cu121'),
    ('2.1.2', 'torchvision==0.16.2'),
    ('2.0.1', ''),  # 2.0 broke the scheme (torchvision 0.15.2)
    ('1.13.1', ''),
])
def test_torchvision_of_torch(torch_version, expected):
    code = exported('TORCHVISION_SPEC')
    assert 'm.version("torch")' in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code.replace('m.version("torch")', repr(torch_version)), {})
    assert out.getvalue().strip() == expected


def test_satisfied_check():
    code = exported('SATISFIED')
    pip_version = m.version('pip')
    for spec, ok in ((f'pip=={pip_version}', True), ('pip<1', False),
                     (f'pip>={re.sub(r"[^0-9.].*", "", pip_version)}', True)):
        proc = subprocess.run([sys.executable, '-c', code, spec],
                              capture_output=True, text=True, timeout=60)
        assert (proc.returncode == 0) == ok, (spec, proc.stderr)
