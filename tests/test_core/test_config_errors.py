"""quant_cfg inputs a new user gets wrong: the error names the file, the
line or the key, and the expected form."""
import pytest

from mmptq.core.presets import load_quant_cfg


# ----------------------------------------- 3. a preset with a syntax error
def test_preset_with_a_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / 'my_preset.py'
    bad.write_text('quant_cfg = dict(\n    w_bits=4,\n    a_bits=4\n'
                   '    calib=dict(num_samples=8))\n')
    with pytest.raises(ValueError) as e:
        load_quant_cfg(str(bad))
    assert str(e.value) == (
        f'syntax error in {bad}, line 3: invalid syntax. Perhaps you forgot '
        'a comma? (in: a_bits=4)')


def test_preset_inheriting_a_syntax_error(tmp_path):
    (tmp_path / 'base.py').write_text('quant_cfg = dict(w_bits=4,,)\n')
    child = tmp_path / 'child.py'
    child.write_text("_base_ = ['base.py']\nquant_cfg = dict(a_bits=4)\n")
    with pytest.raises(ValueError) as e:
        load_quant_cfg(str(child))
    assert str(e.value) == (f'syntax error in a file that {child} inherits '
                            'from (_base_), line 1: invalid syntax')


# ------------------------------- 7. a preset name or a str where a dict goes
def test_quantize_model_takes_a_preset_name():
    from mmptq.core.config import resolve_quant_cfg
    assert resolve_quant_cfg('w8a8') == resolve_quant_cfg(
        load_quant_cfg('w8a8'))
    assert resolve_quant_cfg('w4a4')['w_bits'] == 4


def test_quantize_model_runs_with_a_preset_name():
    import torch

    from mmptq.apis import quantize_model
    from toy_models import TinyCNN
    torch.manual_seed(0)
    _, summary = quantize_model(TinyCNN().eval(), 'w4a4',
                                [torch.randn(2, 3, 16, 16)])
    assert summary.quant_cfg['w_bits'] == 4


def test_a_preset_file_path_and_an_unknown_name(tmp_path):
    from mmptq.core.config import resolve_quant_cfg
    preset = tmp_path / 'mine.py'
    preset.write_text('quant_cfg = dict(w_bits=6, a_bits=6)\n')
    assert resolve_quant_cfg(str(preset))['w_bits'] == 6
    assert resolve_quant_cfg(preset)['a_bits'] == 6  # a pathlib.Path
    with pytest.raises(ValueError, match=r"unknown quantization preset "
                       r"'w8a9': not a file"):
        resolve_quant_cfg('w8a9')
    with pytest.raises(ValueError) as e:
        resolve_quant_cfg(['w8a8'])
    assert str(e.value) == (
        "quant_cfg must be a dict, a preset name (e.g. 'w8a8') or the path "
        "of a config file with a quant_cfg section; got list ['w8a8']")


QUANTIZER_FORM = ("must be a quantizer dict, dict(type=..., ...), e.g. "
                  "dict(type='UniformQuantizer', "
                  "observer=dict(type='MinMaxObserver')); got ")


@pytest.mark.parametrize('cfg,message', [
    (dict(weight='MinMaxObserver'),
     f"quant_cfg.weight {QUANTIZER_FORM}'MinMaxObserver' (MinMaxObserver is "
     "an observer: weight=dict(observer=dict(type='MinMaxObserver')))"),
    (dict(act='UniformQuantizer'),
     f"quant_cfg.act {QUANTIZER_FORM}'UniformQuantizer' (write "
     "act=dict(type='UniformQuantizer'))"),
    (dict(act=None), f'quant_cfg.act {QUANTIZER_FORM}None'),
    (dict(norm='PTFQuantizer'),
     f"quant_cfg.norm {QUANTIZER_FORM}'PTFQuantizer' (write "
     "norm=dict(type='PTFQuantizer'))"),
    (dict(attn=dict(softmax='LogSqrt2Quantizer')),
     f"quant_cfg.attn.softmax {QUANTIZER_FORM}'LogSqrt2Quantizer' (write "
     "softmax=dict(type='LogSqrt2Quantizer'))"),
    (dict(overrides=[dict(name='head', weight=8)]),
     f'quant_cfg.overrides[0].weight {QUANTIZER_FORM}8'),
    (dict(weight=dict(observer='MinMaxObserver')),
     'quant_cfg.weight.observer must be an observer dict, dict(type=..., '
     "...), e.g. dict(type='MinMaxObserver'); got 'MinMaxObserver'"),
], ids=['weight-observer-name', 'act-quantizer-name', 'act-none',
        'norm-name', 'softmax-name', 'override-int', 'observer-name'])
def test_a_str_where_a_quantizer_dict_goes(cfg, message):
    from mmptq.core.config import resolve_quant_cfg
    with pytest.raises(ValueError) as e:
        resolve_quant_cfg(cfg)
    assert str(e.value) == message


# ------------------------- 10. an unknown observer named by its full key
@pytest.mark.parametrize('cfg,key', [
    (dict(act=dict(observer=dict(type='MinMaxObs'))), 'act.observer'),
    (dict(weight=dict(observer=dict(type='MinMaxObs'))), 'weight.observer'),
    (dict(norm=dict(type='PTFQuantizer',
                    observer=dict(type='MinMaxObs'))), 'norm.observer'),
    (dict(attn=dict(softmax=dict(observer=dict(type='MinMaxObs')))),
     'attn.softmax.observer'),
    (dict(overrides=[dict(name='head', act=dict(
        observer=dict(type='MinMaxObs')))]), 'overrides[0].act.observer'),
], ids=['act', 'weight', 'norm', 'softmax', 'override'])
def test_unknown_observer_names_its_key(cfg, key):
    from mmptq.core.config import resolve_quant_cfg
    with pytest.raises(ValueError) as e:
        resolve_quant_cfg(cfg)
    assert str(e.value) == (
        f"quant_cfg.{key}: unknown observer type 'MinMaxObs'; did you mean: "
        'MinMaxObserver, EMAMinMaxObserver, AvgMinMaxObserver?')


def test_unknown_quantizer_names_its_key():
    from mmptq.core.config import resolve_quant_cfg
    with pytest.raises(ValueError) as e:
        resolve_quant_cfg(dict(attn=dict(softmax=dict(type='LogSqrt2'))))
    assert str(e.value).startswith(
        "quant_cfg.attn.softmax: unknown quantizer type 'LogSqrt2'; did you "
        "mean: ")


@pytest.mark.parametrize('key', ['act', 'weight', 'norm'])
def test_the_key_reaches_the_observer_build(key):
    """Past resolving (a QuantConfig made by hand, or a type unregistered
    since): the quantizer's own build names the key too."""
    import torch

    from mmptq.apis import quantize_model
    from mmptq.core.config import QuantConfig, resolve_quant_cfg
    from toy_models import TinyCNN, TinyViT
    cfg = dict(resolve_quant_cfg(None))
    model = TinyViT() if key == 'norm' else TinyCNN()
    cfg[key] = dict(cfg[key] or dict(type='PTFQuantizer'),
                    observer=dict(type='Nope'))
    with pytest.raises(ValueError) as e:
        quantize_model(model.eval(), QuantConfig(cfg),
                       [torch.randn(2, 3, 16, 16)])
    assert str(e.value).startswith(
        f"quant_cfg.{key}.observer: unknown observer type 'Nope'; did you "
        'mean: ')


def test_a_quantizer_built_alone_keeps_the_short_key():
    from mmptq.quantizers import UniformQuantizer
    from mmptq.quantizers.base import config_key
    with pytest.raises(ValueError, match=r"^quant_cfg\.observer: unknown"):
        UniformQuantizer(observer=dict(type='Nope'))
    with config_key('norm'):
        with pytest.raises(ValueError,
                           match=r"^quant_cfg\.norm\.observer: unknown"):
            UniformQuantizer(observer=dict(type='Nope'))
    with pytest.raises(ValueError, match=r"^quant_cfg\.observer: unknown"):
        UniformQuantizer(observer=dict(type='Nope'))


def test_mixed_precision_is_not_silently_ignored():
    """quant_cfg.mixed_precision is a request for an allocation, which
    quantize_model does not run: an error that names the workflow, before
    any forward."""
    import torch

    from mmptq.apis import quantize_model
    from toy_models import TinyCNN
    with pytest.raises(ValueError, match=r'^quant_cfg\.mixed_precision asks '
                       r'for a bit allocation.*allocate_bits'):
        quantize_model(TinyCNN().eval(),
                       dict(mixed_precision=dict(budget='W5A5')),
                       [torch.randn(2, 3, 16, 16)])
