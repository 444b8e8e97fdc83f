"""Packaging of mmptq. Use ``make install``: it installs torch and builds
mmcv with compiled ops first, which plain pip cannot do in the right order.
"""
import os.path as osp
import re

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_version() -> str:
    for name in ('version.py', '__init__.py'):
        path = osp.join(HERE, 'mmptq', name)
        if osp.isfile(path):
            with open(path, encoding='utf-8') as f:
                m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]",
                              f.read(), re.M)
            if m:
                return m.group(1)
    raise RuntimeError('mmptq.__version__ not found')


def read_requirements(name: str) -> list:
    path = osp.join(HERE, 'requirements', name)
    with open(path, encoding='utf-8') as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line]


setup(
    name='mmptq',
    version=read_version(),
    description='Post-training quantization for the OpenMMLab 2.x stack',
    long_description=open(osp.join(HERE, 'README.md'), encoding='utf-8').read()
    if osp.isfile(osp.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['mmptq', 'mmptq.*']),
    include_package_data=True,
    # configs/ and the demo checkpoints/ ship inside the package (as
    # mmdet's .mim): mmptq/.mim links to them; a wheel holds copies
    package_data={'mmptq': ['.mim/configs/**/*.py',
                            '.mim/checkpoints/demo/*.pth']},
    # torch and mmcv (with compiled ops) are installed by `make install`
    # before mmptq, as OpenMMLab packages do; mmcv is in extras 'mim'.
    install_requires=['mmengine>=0.10.7'] + read_requirements('runtime.txt'),
    extras_require={
        'tests': read_requirements('tests.txt'),
        'mim': read_requirements('mminstall.txt'),
    },
    # the command lines: python -m mmptq.tools.<name>, or these scripts
    entry_points={'console_scripts': [
        f'mmptq-{name} = mmptq.tools.{name}:main'
        for name in ('test', 'quantize', 'benchmark', 'export', 'analyze',
                     'train', 'convert_itpn', 'convert_lavt', 'build_data')]},
    zip_safe=False,
)
