"""A non-editable install finds the presets, configs and demo checkpoints
(the wheel holds copies of what ``mmptq/.mim`` links to in the source),
and its command lines run outside the repository: ``python -m
mmptq.tools.<name>`` and the ``mmptq-<name>`` scripts."""
import os
import os.path as osp
import shutil
import subprocess
import sys
import textwrap

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

CHECK = textwrap.dedent('''
    import os.path as osp, sys
    import mmptq
    from mmptq.apis import list_presets, load_quant_cfg, resolve_quant_cfg
    from mmptq.apis.benchmark import demo_models
    site = sys.argv[1]
    assert mmptq.__file__.startswith(site), mmptq.__file__
    assert not osp.islink(osp.join(site, 'mmptq', '.mim', 'configs'))
    names = list_presets()
    assert 'w4a4' in names and 'qdrop_w4a4' in names, names
    cfg = resolve_quant_cfg(load_quant_cfg('repq-vit_w4a4'))  # _base_ chain
    assert (cfg['w_bits'], cfg['transforms']) == (4, [dict(type='RepQReparam')])
    for spec in demo_models():
        assert spec.config.startswith(site) and osp.isfile(spec.config)
        assert osp.isfile(spec.checkpoint), spec.checkpoint
    print('installed ok', len(names))
''')


def test_wheel_ships_presets_and_demo_models(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    for name in ('setup.py', 'README.md', 'requirements', 'mmptq', 'configs',
                 'checkpoints'):
        path = osp.join(ROOT, name)
        if osp.isdir(path):
            shutil.copytree(path, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns('__pycache__'))
        else:
            shutil.copy(path, src / name)
    pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check']
    wheels = tmp_path / 'wheels'
    build = subprocess.run(
        pip + ['wheel', '-q', '--no-deps', '--no-build-isolation', '-w',
               str(wheels), str(src)],
        capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel, = wheels.glob('mmptq-*.whl')
    site = tmp_path / 'site'
    install = subprocess.run(
        pip + ['install', '-q', '--no-deps', '--target', str(site),
               str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    script = tmp_path / 'check.py'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site)] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    script.write_text(CHECK)
    # outside the repository, the installed copy first on the path
    proc = subprocess.run(
        [sys.executable, str(script), str(site)], cwd=str(tmp_path),
        env=env,
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'installed ok' in proc.stdout
    # the command lines of the installed copy, from outside the repository
    for tool in ('test', 'quantize', 'benchmark'):
        proc = subprocess.run(
            [sys.executable, '-m', f'mmptq.tools.{tool}', '--help'],
            cwd=str(tmp_path), env=env,
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        text = ''.join(proc.stdout.split())  # argparse wraps inside names
        assert 'w4a4' in text and 'qdrop_w4a4' in text or \
            tool == 'benchmark' and 'mask-rcnn_swin' in text, proc.stdout
    scripts = sorted(p.name for p in (site / 'bin').glob('mmptq-*'))
    assert {'mmptq-test', 'mmptq-quantize', 'mmptq-benchmark'} <= \
        set(scripts), scripts
