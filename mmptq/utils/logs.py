"""Logs a person can read: progress bars only on a terminal, pycocotools'
printout out of the log.

- :func:`install_quiet_progress`: mmengine's ``ProgressBar`` (used by
  mmptq's calibration, benchmark, data builders and mmengine's helpers)
  draws its carriage-return bar only where its stream is a terminal, and
  ends it with a newline (no log line runs into it). Written to a file or
  a pipe it prints a plain line at 0 %, every 25 % and at the end.
- :func:`install_pycocotools_capture`: pycocotools prints its progress
  and the twelve-line summary of every COCO evaluation with ``print``;
  captured and logged at DEBUG level (mmdet's ``CocoMetric`` logs the
  metrics themselves: ``bbox_mAP_copypaste`` ...). mmptq's command lines
  install it.
"""
import contextlib
import functools
import io
import logging
from typing import Any, Callable

__all__ = ['install_quiet_progress', 'install_pycocotools_capture']

#: a plain progress line at each of these fractions (non-terminals)
STEPS = (0.25, 0.5, 0.75)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def install_quiet_progress() -> None:
    """Make mmengine's ``ProgressBar`` log-friendly (idempotent)."""
    from mmengine.utils import progressbar

    bar_cls = progressbar.ProgressBar
    if getattr(bar_cls, '_mmptq_quiet', False):
        return
    start, update = bar_cls.start, bar_cls.update

    @functools.wraps(start)
    def quiet_start(self: Any) -> None:
        self._mmptq_tty = _isatty(self.file)
        if self._mmptq_tty:
            return start(self)
        self._mmptq_next = 0
        from mmengine.utils.timer import Timer
        self.timer = Timer()
        self._mmptq_line()

    @functools.wraps(update)
    def quiet_update(self: Any, num_tasks: int = 1) -> None:
        if getattr(self, '_mmptq_tty', True):
            update(self, num_tasks)
            if 0 < self.task_num <= self.completed:
                self.file.write('\n')  # the next log line starts clean
                self.file.flush()
            return
        assert num_tasks > 0
        self.completed += num_tasks
        if self.task_num <= 0:
            return
        done = self.completed / self.task_num
        steps = [s for s in STEPS if s <= done]
        if self.completed >= self.task_num or \
                len(steps) > self._mmptq_next:
            self._mmptq_next = len(steps)
            self._mmptq_line()

    def line(self: Any) -> None:
        elapsed = self.timer.since_start()
        if self.task_num > 0:
            text = (f'progress: {self.completed}/{self.task_num} '
                    f'({100 * self.completed // self.task_num}%), '
                    f'elapsed: {int(elapsed + 0.5)}s')
            if 0 < self.completed < self.task_num:
                eta = elapsed * (self.task_num - self.completed) / \
                    self.completed
                text += f', ETA: {int(eta + 0.5)}s'
        else:
            text = f'progress: {self.completed} done'
        self.file.write(text + '\n')
        self.file.flush()

    bar_cls.start = quiet_start
    bar_cls.update = quiet_update
    bar_cls._mmptq_line = line
    bar_cls._mmptq_quiet = True


def _captured(func: Callable) -> Callable:

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                return func(*args, **kwargs)
        finally:
            text = out.getvalue().strip()
            if text:
                from mmengine.logging import print_log
                print_log(f'pycocotools: {text}', logger='current',
                          level=logging.DEBUG)

    wrapper._mmptq_captured = True
    return wrapper


def install_pycocotools_capture() -> bool:
    """Capture what pycocotools prints (loading annotations, evaluating,
    the summary tables) into DEBUG log records (idempotent). False where
    pycocotools is not installed."""
    try:
        from pycocotools import coco, cocoeval
    except ImportError:
        return False
    for cls, names in ((coco.COCO, ('__init__', 'loadRes', 'createIndex')),
                       (cocoeval.COCOeval,
                        ('evaluate', 'accumulate', 'summarize'))):
        for name in names:
            func = getattr(cls, name)
            if not getattr(func, '_mmptq_captured', False):
                setattr(cls, name, _captured(func))
    return True
