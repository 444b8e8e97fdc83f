"""Output paths checked before any work, atomic writes and file hashing,
shared by the tools, the test loop, the checkpoint and resume-state code."""
import hashlib
import os
import os.path as osp
import tempfile
from contextlib import contextmanager
from typing import Dict, Iterator, Optional


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path in ``path``'s folder to write to; on success it
    replaces ``path`` (``os.replace``), on failure it is removed, so ``path``
    never holds a partial file. The file gets the permissions a plain
    ``open(path, 'w')`` would give it."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.',
                               suffix='.tmp', dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def file_digest(path: str) -> Dict:
    """``dict(sha256=..., size=...)`` of the file ``path``, read in 1 MiB
    blocks."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return dict(sha256=h.hexdigest(), size=osp.getsize(path))


def make_dir(path: str, option: str) -> None:
    """Create the folder ``path`` (of the CLI option ``option``) now, before
    any work, as the upstream tools do for --out / --show-dir."""
    try:
        os.makedirs(path or '.', exist_ok=True)
    except OSError as e:
        raise ValueError(f'{option}: cannot create the folder {path}: '
                         f'{e.strerror}') from None


def prepare_out_path(out: str, checkpoint: Optional[str],
                     option: str = '--out') -> None:
    """Check an output file before any work: it must not be the input
    ``checkpoint`` (it would be overwritten), and its folder is created."""
    out_abs = osp.abspath(osp.expanduser(out))
    if checkpoint:
        ckpt = osp.abspath(osp.expanduser(checkpoint))
        if osp.realpath(out_abs) == osp.realpath(ckpt) or (
                osp.exists(out_abs) and osp.exists(ckpt)
                and osp.samefile(out_abs, ckpt)):
            raise ValueError(
                f'{option} {out} is the input checkpoint {checkpoint}: it '
                'would be overwritten; write to another file')
    if osp.isdir(out_abs):
        raise ValueError(f'{option} {out} is a folder; give a file path')
    make_dir(osp.dirname(out_abs), option)
