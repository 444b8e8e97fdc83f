"""File writing and hashing shared by the checkpoint and resume-state
code."""
import hashlib
import os
import os.path as osp
import tempfile
from contextlib import contextmanager
from typing import Dict, Iterator


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
