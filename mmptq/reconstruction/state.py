"""Resume state of a reconstruction run: the units done, one state dict
each, in a directory named after the run's fingerprint."""
import json
import os
import os.path as osp
import shutil
from typing import Dict, List

import torch
from mmengine import dist
from mmengine.logging import print_log
from torch import nn

from mmptq.utils import atomic_path, file_digest


class ReconstructionState:
    """Progress of one reconstruction run in ``root`` (a directory named
    after the run's fingerprint: model, calibration state and settings):
    ``progress.json`` (units done, with each unit file's sha256 and size)
    and one state dict per unit. A run with another fingerprint uses
    another directory (states of other runs found beside it are logged as
    ignored); ``resume=False`` starts over. A unit file that is missing,
    truncated or altered is not resumed: :meth:`load` warns and returns
    False, and the unit is computed again."""

    def __init__(self, root: str, resume: bool) -> None:
        self.root = root
        self.done: List[str] = []
        self.files: Dict[str, Dict] = {}
        path = osp.join(root, 'progress.json')
        found = osp.exists(path)
        if found and resume:
            try:
                with open(path) as f:
                    progress = json.load(f)
                self.done = list(progress['done'])
                self.files = dict(progress.get('files', {}))
            except (OSError, ValueError, KeyError, TypeError) as e:
                print_log(f'mmptq: the reconstruction progress {path} is '
                          f'unreadable ({e}); starting over',
                          logger='current', level=30)
                self.done, self.files = [], {}
        if dist.is_main_process():
            self._log_other_runs()
        dist.barrier()  # every rank has read before anything is removed
        if found and not resume and dist.is_main_process():
            shutil.rmtree(root)
        os.makedirs(root, exist_ok=True)
        dist.barrier()

    def _log_other_runs(self) -> None:
        """Name the resume states of other runs (other fingerprints) beside
        ``root``: they are not used by this run."""
        parent, own = osp.split(osp.normpath(self.root))
        if not osp.isdir(parent):
            return
        for name in sorted(os.listdir(parent)):
            other = osp.join(parent, name)
            if name != own and osp.isfile(osp.join(other, 'progress.json')):
                print_log(f'mmptq: ignored the reconstruction state {other}: '
                          f'it is from another run (other model, '
                          f'calibration data or settings; this run is '
                          f'{own}). Remove it if that run is not to be '
                          f'resumed', logger='current', level=30)

    def _unit_path(self, name: str) -> str:
        return osp.join(self.root, f'{name}.pth')

    def _corrupt(self, name: str, why: str) -> bool:
        print_log(f'mmptq: the resume state of reconstruction unit {name} '
                  f'({self._unit_path(name)}) is corrupt: {why}; the unit '
                  f'is computed again', logger='current', level=30)
        self.done.remove(name)
        self.files.pop(name, None)
        return False

    def load(self, name: str, unit: nn.Module) -> bool:
        """Load unit ``name``'s saved state into ``unit``; False (with a
        warning) when its file is missing or not what was saved."""
        path = self._unit_path(name)
        if not osp.isfile(path):
            return self._corrupt(name, 'the file is missing')
        expected = self.files.get(name)
        if expected is not None:
            found = file_digest(path)
            if found['size'] != expected['size']:
                return self._corrupt(
                    name, f'{found["size"]} bytes, {expected["size"]} were '
                    f'saved')
            if found['sha256'] != expected['sha256']:
                return self._corrupt(name, 'its sha256 differs from the one '
                                     'saved')
        try:
            state = torch.load(path, weights_only=True)
            unit.load_state_dict(state)
        except Exception as e:  # noqa: BLE001 - any unreadable file
            return self._corrupt(name, f'{type(e).__name__}: {e}')
        return True

    def save(self, name: str, unit: nn.Module) -> None:
        """Written by the main process (ranks hold the same state)."""
        if name not in self.done:
            self.done.append(name)
        if dist.is_main_process():
            with atomic_path(self._unit_path(name)) as tmp:
                torch.save(unit.state_dict(), tmp)
                self.files[name] = file_digest(tmp)
            with atomic_path(osp.join(self.root, 'progress.json')) as tmp:
                with open(tmp, 'w') as f:
                    json.dump(dict(done=self.done, files=self.files), f)
        dist.barrier()

    def finish(self) -> None:
        """The run is complete: nothing to resume."""
        dist.barrier()
        if dist.is_main_process():
            shutil.rmtree(self.root)
