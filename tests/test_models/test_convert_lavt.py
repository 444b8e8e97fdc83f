"""The conversion of released LAVT checkpoints to mmptq.models.LAVT
(mmptq.models.convert_lavt, tools/convert_lavt.py)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from mmptq.models.convert_lavt import convert_lavt_state_dict, lavt_state_dicts
from mmptq.registry import MODELS

ROOT = Path(__file__).resolve().parents[2]
EMBED, DEPTHS, HEADS, WINDOW = 16, (2, 1, 1, 1), (1, 1, 2, 2), 4
TEXT = dict(hidden=24, layers=2, intermediate=32, vocab=30, positions=32)


def ms_relative_position_index(window: int) -> torch.Tensor:
    """Microsoft Swin's relative position index of a window (its
    ``WindowAttention``), written out here."""
    coords = torch.stack(torch.meshgrid(torch.arange(window),
                                        torch.arange(window),
                                        indexing='ij')).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel = rel + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def lavt_checkpoint(lavt_one: bool = True, pooler: bool = False,
                    seed: int = 0) -> dict:
    """Random weights under the key names and shapes of LAVT's modeling code
    (lib/backbone.py MultiModalSwinTransformer with MMBasicLayer, PWAM,
    res_gate; lib/mask_predictor.py SimpleDecoding as ``classifier``; a HF
    v3 BertModel) for a small configuration; saved as LAVT's train.py
    does (``model``, ``bert_model`` for the lavt model, ``args``...)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {}

    def linear(name, out, inp, bias=True):
        shapes[f'{name}.weight'] = (out, inp)
        if bias:
            shapes[f'{name}.bias'] = (out, )

    def conv(name, out, inp, kernel, bias=True):
        """``kernel``: (1, ) a Conv1d, (k, k) a Conv2d."""
        shapes[f'{name}.weight'] = (out, inp, *kernel)
        if bias:
            shapes[f'{name}.bias'] = (out, )

    def norm(name, dim):
        shapes[f'{name}.weight'] = shapes[f'{name}.bias'] = (dim, )

    lang = TEXT['hidden']
    bb = 'backbone'
    shapes[f'{bb}.patch_embed.proj.weight'] = (EMBED, 3, 4, 4)
    shapes[f'{bb}.patch_embed.proj.bias'] = (EMBED, )
    norm(f'{bb}.patch_embed.norm', EMBED)
    for i, (depth, heads) in enumerate(zip(DEPTHS, HEADS)):
        d = EMBED * 2**i
        layer = f'{bb}.layers.{i}'
        for j in range(depth):
            blk = f'{layer}.blocks.{j}'
            norm(f'{blk}.norm1', d)
            shapes[f'{blk}.attn.relative_position_bias_table'] = (
                (2 * WINDOW - 1)**2, heads)
            linear(f'{blk}.attn.qkv', 3 * d, d)
            linear(f'{blk}.attn.proj', d, d)
            norm(f'{blk}.norm2', d)
            linear(f'{blk}.mlp.fc1', 4 * d, d)
            linear(f'{blk}.mlp.fc2', d, 4 * d)
        fusion = f'{layer}.fusion'
        conv(f'{fusion}.vis_project.0', d, d, (1, ))
        att = f'{fusion}.image_lang_att'
        conv(f'{att}.f_key.0', d, lang, (1, ))
        conv(f'{att}.f_query.0', d, d, (1, ))
        conv(f'{att}.f_value.0', d, lang, (1, ))
        conv(f'{att}.W.0', d, d, (1, ))
        conv(f'{fusion}.project_mm.0', d, d, (1, ))
        linear(f'{layer}.res_gate.0', d, d, bias=False)
        linear(f'{layer}.res_gate.2', d, d, bias=False)
        if i < 3:
            linear(f'{layer}.downsample.reduction', 2 * d, 4 * d, bias=False)
            norm(f'{layer}.downsample.norm', 4 * d)
        norm(f'{bb}.norm{i}', d)
    c4 = EMBED * 8
    hidden = c4 // 2
    for level, cin in ((4, c4 + c4 // 2), (3, hidden + c4 // 4),
                       (2, hidden + c4 // 8)):
        for j, k_in in ((1, cin), (2, hidden)):
            conv(f'classifier.conv{j}_{level}', hidden, k_in, (3, 3),
                 bias=False)
            norm(f'classifier.bn{j}_{level}', hidden)
            shapes[f'classifier.bn{j}_{level}.running_mean'] = (hidden, )
            shapes[f'classifier.bn{j}_{level}.running_var'] = (hidden, )
    conv('classifier.conv1_1', 2, hidden, (1, 1))

    bert = {}
    h, inter = TEXT['hidden'], TEXT['intermediate']
    bert['embeddings.word_embeddings.weight'] = (TEXT['vocab'], h)
    bert['embeddings.position_embeddings.weight'] = (TEXT['positions'], h)
    bert['embeddings.token_type_embeddings.weight'] = (2, h)
    bert['embeddings.LayerNorm.weight'] = bert[
        'embeddings.LayerNorm.bias'] = (h, )
    for k in range(TEXT['layers']):
        p = f'encoder.layer.{k}'
        for name, out, inp in (('attention.self.query', h, h),
                               ('attention.self.key', h, h),
                               ('attention.self.value', h, h),
                               ('attention.output.dense', h, h),
                               ('intermediate.dense', inter, h),
                               ('output.dense', h, inter)):
            bert[f'{p}.{name}.weight'] = (out, inp)
            bert[f'{p}.{name}.bias'] = (out, )
        for name in ('attention.output.LayerNorm', 'output.LayerNorm'):
            bert[f'{p}.{name}.weight'] = bert[f'{p}.{name}.bias'] = (h, )
    if pooler:
        bert['pooler.dense.weight'] = (h, h)
        bert['pooler.dense.bias'] = (h, )

    def rand(s):
        return torch.randn(s, generator=g)

    model = {k: rand(s) for k, s in shapes.items()}
    for key in list(model):
        if key.endswith('running_var'):
            model[key] = model[key].abs() + 0.5
            model[key.replace('running_var', 'num_batches_tracked')] = \
                torch.tensor(7)
    for i, depth in enumerate(DEPTHS):
        for j in range(depth):
            model[f'backbone.layers.{i}.blocks.{j}.attn.'
                  'relative_position_index'] = \
                ms_relative_position_index(WINDOW)
    bert = {k: rand(s) for k, s in bert.items()}
    ckpt = dict(optimizer=dict(state={}, param_groups=[]), epoch=39,
                lr_scheduler=dict(last_epoch=3))
    if lavt_one:
        model.update((f'text_encoder.{k}', v) for k, v in bert.items())
        ckpt['model'] = model
    else:
        ckpt.update(model=model, bert_model=bert)
    return ckpt


def small_lavt():
    """mmptq's LAVT in the configuration of ``lavt_checkpoint``."""
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='mmptq.LAVT',
        backbone=dict(type='SwinTransformer', embed_dims=EMBED,
                      depths=list(DEPTHS), num_heads=list(HEADS),
                      window_size=WINDOW),
        text_encoder=dict(config=dict(
            hidden_size=TEXT['hidden'], num_hidden_layers=TEXT['layers'],
            num_attention_heads=2, intermediate_size=TEXT['intermediate'],
            vocab_size=TEXT['vocab'],
            max_position_embeddings=TEXT['positions'])),
        tokenizer=None)).eval()


@pytest.mark.parametrize('lavt_one,pooler', [(True, False), (False, False),
                                             (False, True)])
def test_every_key_maps_and_loads_strictly(lavt_one, pooler):
    ckpt = lavt_checkpoint(lavt_one=lavt_one, pooler=pooler)
    state = convert_lavt_state_dict(*lavt_state_dicts(ckpt))
    model = small_lavt()
    own = model.state_dict()
    assert sorted(state) == sorted(own)
    for key, value in own.items():
        assert state[key].shape == value.shape, key
    model.load_state_dict(state, strict=True)
    src = ckpt['model']
    bert = src if lavt_one else {f'text_encoder.{k}': v
                                 for k, v in ckpt['bert_model'].items()}
    # same tensors under the new names (those without a reorder)
    pairs = {
        'fusions.2.image_lang_att.f_key.0.weight':
        'backbone.layers.2.fusion.image_lang_att.f_key.0.weight',
        'gates.3.2.weight': 'backbone.layers.3.res_gate.2.weight',
        'decoder.bn2_3.running_var': 'classifier.bn2_3.running_var',
        'decoder.conv1_1.bias': 'classifier.conv1_1.bias',
        'backbone.norm1.weight': 'backbone.norm1.weight',
        'backbone.patch_embed.projection.weight':
        'backbone.patch_embed.proj.weight',
        'backbone.stages.0.blocks.1.attn.w_msa.qkv.weight':
        'backbone.layers.0.blocks.1.attn.qkv.weight',
        'backbone.stages.3.blocks.0.ffn.layers.1.weight':
        'backbone.layers.3.blocks.0.mlp.fc2.weight',
        'backbone.stages.1.blocks.0.ffn.layers.0.0.bias':
        'backbone.layers.1.blocks.0.mlp.fc1.bias',
    }
    for new, old in pairs.items():
        assert torch.equal(model.state_dict()[new], src[old]), new
    assert torch.equal(
        model.state_dict()['text_encoder.encoder.layer.1.output.dense.weight'],
        bert['text_encoder.encoder.layer.1.output.dense.weight'])


def test_swin_index_equals_microsofts():
    """The relative position index mmdet's Swin builds is the one in LAVT's
    checkpoints (loading it changes nothing)."""
    model = small_lavt()
    own = model.state_dict()[
        'backbone.stages.0.blocks.0.attn.w_msa.relative_position_index']
    assert torch.equal(own, ms_relative_position_index(WINDOW))


def reference_patch_merging(x, hw, reduction, norm_w, norm_b):
    """LAVT's (Microsoft Swin's) PatchMerging: the 2x2 neighbours
    concatenated as (0,0), (1,0), (0,1), (1,1), LayerNorm, Linear."""
    B, _, C = x.shape
    x = x.view(B, *hw, C)
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                   x[:, 1::2, 1::2]], -1).view(B, -1, 4 * C)
    return F.linear(F.layer_norm(x, (4 * C, ), norm_w, norm_b), reduction)


def reference_block(x, hw, p, heads, window):
    """A non-shifted block of LAVT's (Microsoft's) Swin from its weights
    ``p`` (keys after ``blocks.{j}.``)."""
    B, L, C = x.shape
    H, W = hw
    y = F.layer_norm(x, (C, ), p['norm1.weight'], p['norm1.bias'])
    y = y.view(B, H // window, window, W // window, window, C).permute(
        0, 1, 3, 2, 4, 5).reshape(-1, window * window, C)
    qkv = F.linear(y, p['attn.qkv.weight'], p['attn.qkv.bias'])
    q, k, v = qkv.view(len(y), -1, 3, heads, C // heads).permute(2, 0, 3, 1,
                                                                 4)
    index = ms_relative_position_index(window).view(-1)
    bias = p['attn.relative_position_bias_table'][index].view(
        window**2, window**2, heads).permute(2, 0, 1)
    attn = ((q * (C // heads)**-0.5) @ k.transpose(-2, -1) + bias).softmax(-1)
    y = (attn @ v).transpose(1, 2).reshape(len(y), -1, C)
    y = F.linear(y, p['attn.proj.weight'], p['attn.proj.bias'])
    y = y.view(B, H // window, W // window, window, window, C).permute(
        0, 1, 3, 2, 4, 5).reshape(B, L, C)
    x = x + y
    z = F.layer_norm(x, (C, ), p['norm2.weight'], p['norm2.bias'])
    z = F.linear(F.gelu(F.linear(z, p['mlp.fc1.weight'], p['mlp.fc1.bias'])),
                 p['mlp.fc2.weight'], p['mlp.fc2.bias'])
    return x + z


def test_converted_swin_computes_as_lavts():
    """A first block and the patch merging with converted weights give
    LAVT's (Microsoft Swin's) outputs: qkv layout and the reordered
    reduction / norm of the patch merging."""
    ckpt = lavt_checkpoint()
    src = ckpt['model']
    model = small_lavt()
    model.load_state_dict(convert_lavt_state_dict(*lavt_state_dicts(ckpt)))
    x = torch.randn(2, 8 * 8, EMBED)
    hw = (8, 8)
    prefix = 'backbone.layers.0.blocks.0.'
    p = {k[len(prefix):]: v for k, v in src.items() if k.startswith(prefix)}
    stage = model.backbone.stages[0]
    with torch.no_grad():
        torch.testing.assert_close(
            stage.blocks[0](x, hw),
            reference_block(x, hw, p, HEADS[0], WINDOW), rtol=1e-4,
            atol=1e-4)
        merged, out_hw = stage.downsample(x, hw)
    assert out_hw == (4, 4)
    torch.testing.assert_close(
        merged, reference_patch_merging(
            x, hw, src['backbone.layers.0.downsample.reduction.weight'],
            src['backbone.layers.0.downsample.norm.weight'],
            src['backbone.layers.0.downsample.norm.bias']),
        rtol=1e-4, atol=1e-4)


def test_refuses_what_is_not_lavt():
    ckpt = lavt_checkpoint()
    with pytest.raises(ValueError, match=r'decoder_embed\.weight'):
        convert_lavt_state_dict({**ckpt['model'],
                                 'decoder_embed.weight': torch.zeros(1)})
    no_text = {k: v for k, v in ckpt['model'].items()
               if not k.startswith('text_encoder.')}
    with pytest.raises(ValueError, match='no text encoder'):
        convert_lavt_state_dict(no_text)
    with pytest.raises(ValueError, match='not a LAVT checkpoint'):
        lavt_state_dicts(dict(state_dict=ckpt['model']))
    # a DDP prefix is removed
    model, bert = lavt_state_dicts(dict(
        model={'module.' + k: v for k, v in ckpt['model'].items()}))
    assert bert is None and sorted(model) == sorted(ckpt['model'])


def test_tool_converts_a_file(tmp_path):
    """``tools/convert_lavt.py SRC DST``: the saved file holds the converted
    state (what ``convert_lavt_state_dict`` gives, under ``state_dict``) and
    names its converter; SRC is untouched."""
    ckpt = lavt_checkpoint(lavt_one=False, pooler=True)
    src, dst = tmp_path / 'lavt.pth', tmp_path / 'out' / 'lavt_mmptq.pth'
    torch.save(ckpt, src)
    before = src.read_bytes()
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools' / 'convert_lavt.py'), str(src),
         str(dst)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert src.read_bytes() == before
    saved = torch.load(dst, map_location='cpu', weights_only=True)
    expected = convert_lavt_state_dict(*lavt_state_dicts(ckpt))
    assert sorted(saved['state_dict']) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(saved['state_dict'][key], value), key
    assert saved['meta']['converter'] == \
        'mmptq.apis.convert_lavt_checkpoint'
