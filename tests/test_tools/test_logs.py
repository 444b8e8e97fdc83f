"""Logs a person can read (``mmptq.utils.logs``): progress bars draw only
on a terminal and plain lines elsewhere; pycocotools' printout is
captured."""
import io
import subprocess
import sys
import textwrap

from mmengine.utils import ProgressBar

from mmptq.utils import install_quiet_progress


class Terminal(io.StringIO):

    def isatty(self) -> bool:
        return True


def test_progress_in_a_file_is_a_few_plain_lines():
    install_quiet_progress()
    out = io.StringIO()
    bar = ProgressBar(200, file=out)
    for _ in range(200):
        bar.update()
    text = out.getvalue()
    assert '\r' not in text and text.endswith('\n')
    lines = text.splitlines()
    assert len(lines) == 5, lines  # 0, 25, 50, 75, 100 %
    assert lines[0].startswith('progress: 0/200') and \
        lines[-1].startswith('progress: 200/200 (100%)')


def test_progress_on_a_terminal_is_a_bar_ending_its_line():
    install_quiet_progress()
    out = Terminal()
    bar = ProgressBar(4, file=out)
    for _ in range(4):
        bar.update()
    text = out.getvalue()
    assert text.count('\r') == 4 and '4/4' in text and text.endswith('\n')


CAPTURE = textwrap.dedent('''
    import contextlib, io
    from mmptq.utils import install_pycocotools_capture
    assert install_pycocotools_capture()
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        gt = COCO()
        gt.dataset = dict(
            images=[dict(id=1, width=10, height=10)],
            categories=[dict(id=1, name='a')],
            annotations=[dict(id=1, image_id=1, category_id=1, iscrowd=0,
                              bbox=[1, 1, 4, 4], area=16)])
        gt.createIndex()
        dt = gt.loadRes([dict(image_id=1, category_id=1, bbox=[1, 1, 4, 4],
                              score=0.9)])
        ev = COCOeval(gt, dt, 'bbox')
        ev.evaluate(); ev.accumulate(); ev.summarize()
    assert out.getvalue() == '', out.getvalue()
    assert abs(ev.stats[0] - 1.0) < 1e-6, ev.stats
    print('quiet')
''')


def test_pycocotools_printout_is_captured():
    proc = subprocess.run([sys.executable, '-c', CAPTURE],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == 'quiet'
