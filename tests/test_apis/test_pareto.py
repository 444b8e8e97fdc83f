"""The Pareto report (mmptq.apis.pareto.write_pareto): the benchmark
table with the GBOPs / MiB of every setting, JSON and one plot."""
import json

from mmptq.apis.pareto import write_pareto


def row(quant, bits, ap, gbops=None, mib=None):
    r = dict(model='toy', quant=quant, bits=bits, metrics=dict(APbox=ap),
             delta=dict(APbox=ap - 77.0), calib_s=None if quant == 'FP'
             else 1.0, calib_ratio=2.0, eval_s=1.0, eval_ratio=1.0,
             peak_mib=10.0)
    if gbops is not None:
        r.update(gbops=gbops, size_mib=mib)
    return r


def test_write_pareto(tmp_path):
    rows = [row('FP', 'FP', 77.0), row('W4A4', 'W4A4', 70.5, 3.085, 0.621),
            row('W8A8', 'W8A8', 76.3, 11.5, 1.24),
            row('mixed@W4A4', 'mixed', 72.0, 3.080, 0.60)]
    paths = write_pareto(rows, str(tmp_path), 'toy')
    text = open(paths['markdown']).read()
    assert '| W4A4 | 3.085 | 0.621 |' in text
    assert '| mixed@W4A4 | 3.08 | 0.6 |' in text
    assert '72.00 (-5.00)' in text
    assert 'FP |' not in text.split('GBOPs')[1]  # FP has no cost row
    assert [r['quant'] for r in json.load(open(paths['json']))] == \
        ['FP', 'W4A4', 'W8A8', 'mixed@W4A4']
    assert paths['plot'].endswith('pareto_toy.png')
    assert open(paths['plot'], 'rb').read(4) == b'\x89PNG'
