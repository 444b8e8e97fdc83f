"""mmptq's venv serves the upstream tools on their own: mmpretrain's
``tools/test.py`` evaluates the FP demo DeiT without importing mmptq (it
needs the real torchvision that ``make install`` installs where a build
matching torch exists; mmptq's stand-in is only there once mmptq is
imported)."""
import os.path as osp
import subprocess
import sys
import textwrap

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

RUN = textwrap.dedent('''
    import runpy, sys
    tool, *args = sys.argv[1:]
    sys.argv = [tool, *args]
    runpy.run_path(tool, run_name='__main__')
    loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'mmptq')
    assert not loaded, loaded
    print('mmptq not imported')
''')


def real_torchvision() -> bool:
    code = ('import importlib.util, sys; '
            'sys.exit(importlib.util.find_spec("torchvision") is None)')
    return subprocess.run([sys.executable, '-c', code]).returncode == 0


@pytest.mark.slow
def test_mmpretrain_test_py_evaluates_the_fp_demo_deit(tmp_path):
    mmpretrain = pytest.importorskip('mmpretrain')
    if not real_torchvision():
        pytest.skip('no torchvision matching this torch is installed (make '
                    'install says why); the upstream tools need it')
    tool = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'tools',
                    'test.py')
    if not osp.isfile(osp.join(ROOT, 'data', 'mnist_cls', 'manifest.json')):
        pytest.fail('data/mnist_cls is missing: make data builds it')
    proc = subprocess.run(
        [sys.executable, '-c', RUN, tool,
         'configs/demo/deit-mini_mnist-cls.py',
         'checkpoints/demo/deit-mini_mnist-cls.pth',
         '--work-dir', str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert 'accuracy/top1' in output and 'mmptq not imported' in output
