"""The worked examples of docs/architecture.md run, and the components they
add work in ``quantize_model`` (in a subprocess: they register names)."""
import os.path as osp
import re
import subprocess
import sys
import textwrap

HERE = osp.dirname(osp.abspath(__file__))
DOC = osp.join(osp.dirname(HERE), 'docs', 'architecture.md')

CHECK = textwrap.dedent('''
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    from mmptq.apis import quantize_model
    from toy_models import TinyViT

    torch.manual_seed(0)
    data = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    cfg = dict(
        w_bits=4, a_bits=4,
        weight=dict(observer=dict(type='AbsMaxObserver')),
        act=dict(type='PowerOfTwoScaleQuantizer'),
        transforms=[dict(type='ClipLinearWeights', k=2.0)],
        reconstruction=dict(type='FPInputReconstruction', iters=4,
                            batch_size=2, resume=False))
    q, summary = quantize_model(TinyViT().eval(), cfg, data)
    acts = [m.input_quantizer for m in q.modules()
            if type(m).__name__ == 'QuantLinear']
    scales = torch.cat([a.scale.flatten() for a in acts])
    assert torch.equal(torch.exp2(torch.log2(scales).round()), scales)
    assert summary.transforms and summary.reconstruction
    assert {{r['weight']['observer'] for r in summary
            if r.get('weight')}} == {{'AbsMaxObserver'}}
    print('examples ok')
''')


def examples() -> str:
    with open(DOC) as f:
        text = f.read()
    part = text[text.index('## Adding a component'):]
    return '\n\n'.join(re.findall(r'```python\n(.*?)```', part, re.S))


def test_architecture_examples_run_and_work_in_quantize_model(tmp_path):
    code = examples()
    assert code.count('register_module()') == 4
    script = tmp_path / 'examples.py'
    script.write_text(code + CHECK.format(tests=HERE))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True,
                          text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'examples ok' in proc.stdout
