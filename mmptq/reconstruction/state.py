"""Resume state of a reconstruction run: the units done, one state dict
each, in a directory named after the run's fingerprint."""
import json
import os
import os.path as osp
import shutil
from typing import List

import torch
from mmengine import dist
from torch import nn


class ReconstructionState:
    """Progress of one reconstruction run in ``root`` (a directory named
    after the run's fingerprint: model, calibration state and settings):
    ``progress.json`` (units done) and one state dict per unit. A run
    with another fingerprint uses another directory; ``resume=False``
    starts over."""

    def __init__(self, root: str, resume: bool) -> None:
        self.root = root
        self.done: List[str] = []
        path = osp.join(root, 'progress.json')
        found = osp.exists(path)
        if found and resume:
            with open(path) as f:
                self.done = json.load(f)['done']
        dist.barrier()  # every rank has read before anything is removed
        if found and not resume and dist.is_main_process():
            shutil.rmtree(root)
        os.makedirs(root, exist_ok=True)
        dist.barrier()

    def _unit_path(self, name: str) -> str:
        return osp.join(self.root, f'{name}.pth')

    def load(self, name: str, unit: nn.Module) -> None:
        state = torch.load(self._unit_path(name), weights_only=True)
        unit.load_state_dict(state)

    def save(self, name: str, unit: nn.Module) -> None:
        """Written by the main process (ranks hold the same state)."""
        self.done.append(name)
        if dist.is_main_process():
            tmp = self._unit_path(name) + '.tmp'
            torch.save(unit.state_dict(), tmp)
            os.replace(tmp, self._unit_path(name))
            tmp = osp.join(self.root, 'progress.json.tmp')
            with open(tmp, 'w') as f:
                json.dump(dict(done=self.done), f)
            os.replace(tmp, osp.join(self.root, 'progress.json'))
        dist.barrier()

    def finish(self) -> None:
        """The run is complete: nothing to resume."""
        dist.barrier()
        if dist.is_main_process():
            shutil.rmtree(self.root)
