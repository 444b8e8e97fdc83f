"""LAVT (mmptq.models.LAVT), the referring segmentor of PTQ4RIS, and its
paper configs (configs/mmdet/ptq4ris)."""
import glob
import os.path as osp
import re
import shutil
import warnings

import numpy as np
import pytest
import torch
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

from mmptq.core.config import merge_quant_cfg
from mmptq.models import LAVT
from mmptq.models.lavt import PWAM, PixelWordAttention
from mmptq.registry import MODELS

transformers = pytest.importorskip('transformers')

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG_DIR = osp.join(ROOT, 'configs', 'mmdet', 'ptq4ris')
MINILM = osp.join(ROOT, 'data', 'cache', 'all-MiniLM-L6-v2')
WORDS = ('the left man in a red shirt on right small dog cat white blue '
         'car behind front of person').split()
TEXT_HIDDEN = 24


@pytest.fixture(scope='module')
def tokenizer_dir(tmp_path_factory) -> str:
    """A tiny uncased WordPiece tokenizer (vocab.txt + tokenizer_config)."""
    path = tmp_path_factory.mktemp('tok')
    vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *WORDS]
    (path / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
    transformers.BertTokenizer(str(path / 'vocab.txt')).save_pretrained(
        str(path))
    return str(path)


def tiny_cfg(tokenizer_dir: str, **kwargs) -> dict:
    cfg = dict(
        type='mmptq.LAVT',
        backbone=dict(type='SwinTransformer', embed_dims=16,
                      depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                      window_size=4, drop_path_rate=0.0),
        text_encoder=dict(config=dict(
            hidden_size=TEXT_HIDDEN, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=32,
            vocab_size=len(WORDS) + 5, max_position_embeddings=32)),
        tokenizer=tokenizer_dir,
        max_tokens=8)
    cfg.update(kwargs)
    return cfg


def tiny_lavt(tokenizer_dir: str, seed: int = 0, **kwargs) -> LAVT:
    torch.manual_seed(seed)
    model = MODELS.build(tiny_cfg(tokenizer_dir, **kwargs))
    model.init_weights()
    return model


def samples(texts, ori_shapes, size=(64, 64), masks=True):
    """Data samples as mmdet's RefCOCO pipeline packs them: text (str or
    list), shapes, ground-truth masks (one per expression) at the input
    size."""
    rng = np.random.RandomState(0)
    out = []
    for i, (text, ori) in enumerate(zip(texts, ori_shapes)):
        s = DetDataSample(metainfo=dict(img_path=f'img{i}.jpg',
                                        img_shape=size, ori_shape=ori,
                                        text=text))
        if masks:
            n = 1 if isinstance(text, str) else len(text)
            s.gt_instances = InstanceData(masks=BitmapMasks(
                rng.rand(n, *size) > 0.5, *size))
        out.append(s)
    return out


def batch(model, data_samples, size=(64, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8)
            for _ in data_samples]
    return model.data_preprocessor(dict(inputs=imgs,
                                        data_samples=data_samples), True)


def test_module_names(tokenizer_dir):
    model = tiny_lavt(tokenizer_dir)
    names = dict(model.named_modules())
    # Swin untouched: the presets' (.*\.)?ffn\.layers\.1 finds fc2
    assert 'backbone.stages.2.blocks.0.ffn.layers.1' in names
    assert 'backbone.stages.0.downsample.reduction' in names
    assert 'backbone.norm3' in names
    assert 'text_encoder.encoder.layer.0.attention.self.query' in names
    assert not any(n.startswith('text_encoder.pooler') and
                   names[n] is not None for n in names)
    assert isinstance(names['fusions.3'], PWAM)
    assert [type(m).__name__ for m in model.gates[0]] == \
        ['Linear', 'ReLU', 'Linear', 'Tanh']
    assert names['decoder.conv1_1'].out_channels == 2
    # PWAM's language width is the text encoder's hidden size
    for i, dim in enumerate((16, 32, 64, 128)):
        att = model.fusions[i].image_lang_att
        assert att.f_key[0].in_channels == TEXT_HIDDEN
        assert att.f_query[0].in_channels == dim
    assert model.text_encoder.config._attn_implementation == 'eager'


def test_loss_and_predict(tokenizer_dir):
    model = tiny_lavt(tokenizer_dir)
    data = samples([['the left man', 'red dog'], 'a small white cat'],
                   [(50, 70), (64, 64)])
    inputs = batch(model, data)
    model.train()
    losses = model(**inputs, mode='loss')
    assert set(losses) == {'loss_ce'} and torch.isfinite(losses['loss_ce'])
    losses['loss_ce'].backward()
    for part in ('fusions.0', 'gates.1', 'decoder.conv1_4',
                 'text_encoder.encoder.layer.0', 'backbone.stages.0'):
        grads = [p.grad for n, p in model.named_parameters()
                 if n.startswith(part)]
        assert grads and all(g is not None for g in grads), part
    model.eval()
    with torch.no_grad():
        out = model(**inputs, mode='predict')
        logits = model(**inputs, mode='tensor')
    # one mask per expression, bool, at the original size
    assert out[0].pred_instances.masks.shape == (2, 50, 70)
    assert out[1].pred_instances.masks.shape == (1, 64, 64)
    assert out[0].pred_instances.masks.dtype == torch.bool
    # logits of the 3 (image, expression) pairs, at the input size
    assert logits.shape == (3, 2, 64, 64)
    # the second sample's mask (no rescale needed) is the logits' argmax
    assert torch.equal(out[1].pred_instances.masks[0],
                       logits[2].argmax(0).bool())
    # the two expressions of one image give different masks
    assert not torch.equal(logits[0], logits[1])
    with torch.no_grad():
        kept = model.predict(inputs['inputs'], inputs['data_samples'],
                             rescale=False)
    assert kept[0].pred_instances.masks.shape == (2, 64, 64)


def test_loss_target_and_ignored_padding(tokenizer_dir):
    """The loss is LAVT's weighted cross-entropy on the input-size logits;
    padding beyond img_shape is ignored."""
    model = tiny_lavt(tokenizer_dir).eval()
    data = samples(['the left man'], [(60, 40)], size=(60, 40))
    inputs = model.data_preprocessor(dict(
        inputs=[torch.zeros(3, 60, 40, dtype=torch.uint8)],
        data_samples=data), True)
    inputs['inputs'] = torch.nn.functional.pad(inputs['inputs'], (0, 24))
    with torch.no_grad():
        loss = model.loss(inputs['inputs'], inputs['data_samples'])['loss_ce']
        logits = model._forward(inputs['inputs'], inputs['data_samples'])
    target = torch.from_numpy(data[0].gt_instances.masks.masks).long()
    expected = torch.nn.functional.cross_entropy(
        logits[..., :40], target, weight=torch.tensor([0.9, 1.1]))
    torch.testing.assert_close(loss, expected)


def run_with_hooks(module_list, fn):
    outs = []
    handles = [m.register_forward_hook(lambda _m, _i, o: outs.append(o))
               for m in module_list]
    try:
        result = fn()
    finally:
        for h in handles:
            h.remove()
    return result, outs


class Identity3(torch.nn.Module):
    def forward(self, x, l_feats, l_mask):
        return x


def test_staged_forward_equals_swin(tokenizer_dir):
    """With the fusions zeroed, LAVT's staged run of the backbone is
    SwinTransformer.forward; with fusion = identity and a zero gate, the
    decoder inputs are Swin's outputs."""
    model = tiny_lavt(tokenizer_dir).eval()
    x = torch.randn(2, 3, 64, 64)
    l_feats = torch.randn(2, TEXT_HIDDEN, 5)
    l_mask = torch.ones(2, 5, 1)
    for fusion in model.fusions:
        torch.nn.init.zeros_(fusion.project_mm[0].weight)
        torch.nn.init.zeros_(fusion.project_mm[0].bias)
    last_blocks = [stage.blocks[-1] for stage in model.backbone.stages]
    with torch.no_grad():
        feats, lavt_blocks = run_with_hooks(
            last_blocks, lambda: model.extract_feat(x, l_feats, l_mask))
        swin_outs, swin_blocks = run_with_hooks(
            last_blocks, lambda: model.backbone(x))
    for a, b in zip(lavt_blocks, swin_blocks):
        torch.testing.assert_close(a, b)
    # the decoder gets norm_i(F_i): here norm(0) = the norm's bias
    norm0 = model.backbone.norm0
    torch.testing.assert_close(
        feats[0], norm0.bias.view(1, -1, 1, 1).expand_as(feats[0]))

    for i in range(4):
        model.fusions[i] = Identity3()
        torch.nn.init.zeros_(model.gates[i][2].weight)
    with torch.no_grad():
        feats = model.extract_feat(x, l_feats, l_mask)
    assert len(feats) == len(swin_outs) == 4
    for a, b in zip(feats, swin_outs):
        torch.testing.assert_close(a, b)


def test_language_gate_adds_gated_fusion(tokenizer_dir):
    """Stage 1 sees downsample(V + gate(F) * F), F = fusions[0](V)."""
    model = tiny_lavt(tokenizer_dir).eval()
    x = torch.randn(1, 3, 64, 64)
    l_feats = torch.randn(1, TEXT_HIDDEN, 6)
    l_mask = torch.tensor([[1., 1., 1., 1., 0., 0.]])[..., None]
    seen = []
    model.backbone.stages[1].blocks[0].register_forward_pre_hook(
        lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        model.extract_feat(x, l_feats, l_mask)
        v, hw = model.embed_image(x)
        v = model.backbone.stages[0].blocks[0](v, hw)
        f = model.fusions[0](v, l_feats, l_mask)
        gate = model.gates[0](f)
        expected, _ = model.backbone.stages[0].downsample(v + gate * f, hw)
    assert gate.abs().max() < 1 and gate.abs().max() > 0  # tanh, not 0
    torch.testing.assert_close(seen[0], expected)


def test_decoder_as_simple_decoding(tokenizer_dir):
    """LAVT's SimpleDecoding written out: Y4 ⊕ F3 → Y3 ⊕ F2 → Y2 ⊕ F1, each
    two conv-BN-ReLU, then the 2-class 1x1 conv; the model's logits are it
    upsampled (bilinear, align_corners) to the input size."""
    model = tiny_lavt(tokenizer_dir).eval()
    dec = model.decoder
    for m in dec.modules():  # BN with non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    feats = [torch.randn(1, c, s, s) for c, s in ((16, 16), (32, 8),
                                                  (64, 4), (128, 2))]

    def block(x, level):
        for j in (1, 2):
            conv = getattr(dec, f'conv{j}_{level}')
            bn = getattr(dec, f'bn{j}_{level}')
            x = torch.relu(torch.nn.functional.batch_norm(
                torch.nn.functional.conv2d(x, conv.weight, padding=1),
                bn.running_mean, bn.running_var, bn.weight, bn.bias,
                eps=bn.eps))
        return x

    def up(x, ref):
        return torch.nn.functional.interpolate(
            x, size=ref.shape[-2:], mode='bilinear', align_corners=True)

    x = block(torch.cat([up(feats[3], feats[2]), feats[2]], 1), 4)
    x = block(torch.cat([up(x, feats[1]), feats[1]], 1), 3)
    x = block(torch.cat([up(x, feats[0]), feats[0]], 1), 2)
    expected = torch.nn.functional.conv2d(x, dec.conv1_1.weight,
                                          dec.conv1_1.bias)
    with torch.no_grad():
        torch.testing.assert_close(dec(feats), expected)
    assert dec.conv1_4.in_channels == 128 + 64
    assert dec.conv1_2.in_channels == 64 + 16


def reference_pwam(pwam: PWAM, x, l_feats, l_mask):
    """PWAM's equations written out head by head (Yang et al. 2022)."""
    att = pwam.image_lang_att
    conv = lambda seq, t: torch.nn.functional.conv1d(  # noqa: E731
        t, seq[0].weight, seq[0].bias)
    inorm = lambda t: torch.nn.functional.instance_norm(t)  # noqa: E731
    vt = x.transpose(1, 2)  # (B, C, HW)
    q = inorm(conv(att.f_query, vt))
    k = conv(att.f_key, l_feats) * l_mask.transpose(1, 2)
    v = conv(att.f_value, l_feats) * l_mask.transpose(1, 2)
    heads = []
    d = att.key_channels // att.num_heads
    dv = att.value_channels // att.num_heads
    for h in range(att.num_heads):
        s = torch.einsum('bcp,bcn->bpn', q[:, h * d:(h + 1) * d],
                         k[:, h * d:(h + 1) * d]) / att.key_channels**0.5
        s = s.masked_fill(l_mask.transpose(1, 2) == 0, -1e4)
        heads.append(torch.einsum('bpn,bcn->bcp', s.softmax(-1),
                                  v[:, h * dv:(h + 1) * dv]))
    g = inorm(conv(att.W, torch.cat(heads, 1)))
    vis = torch.nn.functional.gelu(conv(pwam.vis_project, vt))
    return torch.nn.functional.gelu(conv(pwam.project_mm, vis * g)) \
        .transpose(1, 2)


@pytest.mark.parametrize('heads', [1, 2])
def test_pwam_shapes_and_equations(heads):
    torch.manual_seed(0)
    pwam = PWAM(32, 24, num_heads=heads).eval()
    x = torch.randn(2, 49, 32)
    l_feats = torch.randn(2, 24, 7)
    l_mask = torch.ones(2, 7, 1)
    l_mask[0, 4:] = 0
    out = pwam(x, l_feats, l_mask)
    assert out.shape == (2, 49, 32)
    torch.testing.assert_close(out, reference_pwam(pwam, x, l_feats, l_mask),
                               rtol=1e-4, atol=1e-5)
    # padded words do not matter
    changed = l_feats.clone()
    changed[0, :, 4:] = 100.0
    torch.testing.assert_close(pwam(x, changed, l_mask)[0], out[0])
    with pytest.raises(ValueError, match='num_heads'):
        PixelWordAttention(32, 24, 30, 30, num_heads=4)


def test_tokenize_as_lavt_and_truncation_warns_once(tokenizer_dir):
    model = tiny_lavt(tokenizer_dir)  # max_tokens=8
    tok = model.tokenizer
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        ids, mask = model.tokenize(['the left man'])
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert ids[0, :5].tolist() == [cls, *tok.convert_tokens_to_ids(
        ['the', 'left', 'man']), sep]
    assert ids[0, 5:].tolist() == [0, 0, 0] and mask[0].tolist() == \
        [1] * 5 + [0] * 3
    long = 'the small white dog on the left of the man in a blue shirt'
    with pytest.warns(UserWarning, match='cut to max_tokens=8') as record:
        ids, mask = model.tokenize([long, long, 'red car'])
        model.tokenize([long])
    assert len(record) == 1 and model.num_truncated == 3
    # LAVT keeps the first max_tokens ids: [CLS] and 7 words, no [SEP]
    assert ids.shape == (3, 8) and ids[0, 0] == cls and sep not in ids[0]
    assert mask[:2].all() and mask[2].sum() == 4


@pytest.mark.parametrize('text,match', [
    ('', r"empty referring expression '' in data sample 'img0.jpg'"),
    ('   ', r"empty referring expression '   '"),
    (['red car', ''], r"empty referring expression ''.*img0.jpg"),
    ([], r"'img0.jpg' has no referring expression"),
    (None, r"'img0.jpg' has no referring expression"),
])
def test_missing_or_empty_expression_is_named(tokenizer_dir, text, match):
    model = tiny_lavt(tokenizer_dir).eval()
    data = samples([text], [(64, 64)], masks=False)
    with pytest.raises(ValueError, match=match):
        model.test_step(dict(inputs=[torch.zeros(3, 64, 64)],
                             data_samples=data))


def test_masks_count_must_match_expressions(tokenizer_dir):
    model = tiny_lavt(tokenizer_dir)
    data = samples(['red car'], [(64, 64)])
    data[0].set_metainfo(dict(text=['red car', 'the dog']))
    with pytest.raises(ValueError, match='1 masks for 2 referring'):
        model(**batch(model, data), mode='loss')


def test_text_encoder_sources(tokenizer_dir, tmp_path):
    # a saved BERT directory loads offline, weights as saved, no pooler
    torch.manual_seed(1)
    bert = transformers.BertModel(transformers.BertConfig(
        hidden_size=TEXT_HIDDEN, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, vocab_size=len(WORDS) + 5,
        max_position_embeddings=32))
    bert.save_pretrained(str(tmp_path / 'bert'))
    model = tiny_lavt(tokenizer_dir, tokenizer=None, text_encoder=dict(
        pretrained=str(tmp_path / 'bert')))
    own = model.text_encoder.state_dict()
    for key, value in bert.state_dict().items():
        if not key.startswith('pooler.'):
            # init_weights did not re-initialise it
            torch.testing.assert_close(own[key], value)
    assert not any(k.startswith('pooler') for k in own)
    # a config beside it must describe it
    with pytest.raises(ValueError, match='hidden_size=32 there 24'):
        tiny_lavt(tokenizer_dir, text_encoder=dict(
            pretrained=str(tmp_path / 'bert'), config=dict(hidden_size=32)))
    # the tokenizer defaults to the same directory (here: none there)
    assert model.tokenizer_dir == str(tmp_path / 'bert')
    with pytest.raises(FileNotFoundError, match=re.escape(
            str(tmp_path / 'nope'))):
        tiny_lavt(tokenizer_dir, text_encoder=dict(
            pretrained=str(tmp_path / 'nope')))
    # neither pretrained nor config: the architecture of the tokenizer
    # directory's config.json
    shutil.copy(osp.join(tokenizer_dir, 'vocab.txt'), tmp_path / 'bert')
    model = tiny_lavt(str(tmp_path / 'bert'), text_encoder=dict())
    assert model.text_encoder.config.hidden_size == TEXT_HIDDEN
    with pytest.raises(ValueError, match='needs `pretrained`'):
        tiny_lavt(tokenizer_dir, text_encoder=dict())
    # a missing tokenizer directory is named when first needed
    model = tiny_lavt(str(tmp_path / 'no-tok'))
    with pytest.raises(FileNotFoundError, match=r"no-tok.*huggingface-cli"):
        model.tokenize(['red car'])


def test_checkpoint_without_text_encoder_keeps_pretrained(tokenizer_dir,
                                                          tmp_path):
    """A state dict without ``text_encoder.*`` (the shipped demo checkpoint:
    its frozen text encoder is the pretrained one) loads strictly and keeps
    the weights of ``text_encoder.pretrained``; one with them loads them;
    a model without ``pretrained`` still needs them."""
    torch.manual_seed(1)
    bert = transformers.BertModel(transformers.BertConfig(
        hidden_size=TEXT_HIDDEN, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, vocab_size=len(WORDS) + 5,
        max_position_embeddings=32), add_pooling_layer=False)
    bert.save_pretrained(str(tmp_path / 'bert'))
    cfg = dict(text_encoder=dict(pretrained=str(tmp_path / 'bert')),
               freeze_text_encoder=True)
    trained = tiny_lavt(tokenizer_dir, seed=2, **cfg)
    state = {k: v for k, v in trained.state_dict().items()
             if not k.startswith('text_encoder.')}
    model = tiny_lavt(tokenizer_dir, seed=3, **cfg)
    model.load_state_dict(state, strict=True)
    for key, value in model.state_dict().items():
        if key.startswith('text_encoder.'):
            torch.testing.assert_close(
                value, bert.state_dict()[key[len('text_encoder.'):]])
        else:
            torch.testing.assert_close(value, trained.state_dict()[key])
    # with text encoder keys, those load
    tuned = {k: v + 1 if k.startswith('text_encoder.') else v
             for k, v in trained.state_dict().items()}
    model.load_state_dict(tuned, strict=True)
    key = 'text_encoder.encoder.layer.0.output.dense.weight'
    torch.testing.assert_close(model.state_dict()[key], tuned[key])
    # without `pretrained` there is nothing to fall back to
    with pytest.raises(RuntimeError, match='Missing key'):
        tiny_lavt(tokenizer_dir).load_state_dict(state, strict=True)


def test_freeze_text_encoder(tokenizer_dir):
    model = tiny_lavt(tokenizer_dir, freeze_text_encoder=True)
    model.train()
    assert not model.text_encoder.training and model.decoder.training
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    loss = model(**batch(model, samples(['red car'], [(64, 64)])),
                 mode='loss')
    loss['loss_ce'].backward()
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert tiny_lavt(tokenizer_dir).text_encoder.embeddings \
        .word_embeddings.weight.requires_grad


@pytest.mark.skipif(not osp.isdir(MINILM),
                    reason='make data unpacks data/cache/all-MiniLM-L6-v2')
def test_minilm_text_encoder():
    """The demo's real text encoder: MiniLM (BERT, 384-d, 6 layers)."""
    model = LAVT(
        backbone=dict(type='SwinTransformer', embed_dims=16,
                      depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                      window_size=4),
        text_encoder=dict(pretrained=MINILM))
    assert model.text_encoder.config.hidden_size == 384
    assert model.fusions[0].image_lang_att.f_key[0].in_channels == 384
    ids, mask = model.tokenize(['the dog on the left'])
    feats, l_mask = model.encode_text(ids, mask)
    assert feats.shape == (1, 384, 20) and l_mask.shape == (1, 20, 1)


# ------------------------------------------------------------ the configs
PAPER = {  # published oIoU (PTQ4RIS) of RefCOCO val / testA / testB
    '': '72.72 / testA 75.74 / testB 68.56',
    'w8a8': '72.33 / testA 75.38 / testB 68.26',
    'w6a6': '71.90 / testA 75.03 / testB 67.40',
    'w4a8': '71.48 / testA 74.60 / testB 66.53',
    'w4a4': '69.21 / testA 72.00 / testB 64.11',
}
DATASETS = {'refcoco': 'refcoco/refs(unc).p',
            'refcoco+': 'refcoco+/refs(unc).p',
            'refcocog-umd': 'refcocog/refs(umd).p'}
STEM = 'lavt_swin-b-w12_bert-base_'


def words(text: str) -> str:
    """A comment block as one line of words."""
    return ' '.join(text.replace('#', ' ').split())


def test_paper_configs_are_complete():
    names = sorted(osp.basename(p)[:-3] for p in glob.glob(
        osp.join(CONFIG_DIR, '*.py')))
    expected = sorted(
        f'{STEM}{d}{s}' for d in DATASETS for s in
        [''] + [f'_{b}' for b in PAPER if b] +
        [f'_ptq4ris-{b}' for b in PAPER if b])
    assert names == expected


@pytest.mark.parametrize('dataset', DATASETS)
def test_paper_configs_resolve(dataset):
    fp = Config.fromfile(osp.join(CONFIG_DIR, f'{STEM}{dataset}.py'))
    assert fp.model.type == 'mmptq.LAVT' and 'quant_cfg' not in fp
    bb = fp.model.backbone
    assert (bb.embed_dims, bb.window_size, list(bb.depths)) == \
        (128, 12, [2, 2, 18, 2])
    assert fp.model.text_encoder.config.hidden_size == 768
    assert fp.model.max_tokens == 20
    for loader in ('train', 'val', 'test'):
        ds = fp[f'{loader}_dataloader'].dataset
        assert ds.type == 'RefCocoDataset' and ds.data_root == 'data/coco/'
        assert ds.split_file == DATASETS[dataset]
        assert ds.ann_file == DATASETS[dataset].split('/')[0] + \
            '/instances.json'
    assert fp.test_dataloader.dataset.split == 'val'
    assert fp.test_evaluator.type == 'RefSegMetric'
    resize = [t for t in fp.test_dataloader.dataset.pipeline
              if t.type == 'Resize'][0]
    assert resize.scale == (480, 480) and not resize.keep_ratio
    assert 'text' in fp.test_dataloader.dataset.pipeline[-1].meta_keys
    with open(osp.join(CONFIG_DIR, f'{STEM}{dataset}.py')) as f:
        header = words(f.read())
    if dataset == 'refcoco':
        assert 'val 72.72 / testA 75.74 / testB 68.56' in header
    for bits, n in (('w8a8', (8, 8)), ('w6a6', (6, 6)), ('w4a8', (4, 8)),
                    ('w4a4', (4, 4))):
        for kind in (bits, f'ptq4ris-{bits}'):
            path = osp.join(CONFIG_DIR, f'{STEM}{dataset}_{kind}.py')
            cfg = Config.fromfile(path)
            assert cfg.model == fp.model
            assert cfg.test_dataloader == fp.test_dataloader
            assert cfg.test_cfg.type == 'mmptq.QuantTestLoop'
            q = merge_quant_cfg(cfg)
            assert (q['w_bits'], q['a_bits']) == n
            assert (q['calib']['num_samples'], q['calib']['batch_size'],
                    q['calib']['split']) == (32, 1, 'train')
            ptq4ris = kind.startswith('ptq4ris')
            acts = {(r.get('act') or {}).get('type') for r in q['overrides']}
            assert ('OutlierReorderQuantizer' in acts) == ptq4ris
            with open(path) as f:
                header = words(f.read().split('_base_')[0])
            if dataset == 'refcoco':
                assert f'val {PAPER[bits]}' in header
            if not ptq4ris:
                assert 'Not a row of the PTQ4RIS tables' in header


def test_paper_model_builds_shrunk(tokenizer_dir):
    """The paper model with a small Swin and BERT builds and predicts; its
    module names match the PTQ4RIS presets' rules."""
    cfg = Config.fromfile(osp.join(CONFIG_DIR, f'{STEM}refcoco_ptq4ris-w4a4.py'))
    model_cfg = cfg.model.to_dict()
    model_cfg['backbone'].update(embed_dims=16, depths=[1, 1, 1, 1],
                                 num_heads=[1, 1, 2, 2], window_size=4)
    model_cfg['text_encoder']['config'].update(
        hidden_size=TEXT_HIDDEN, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, vocab_size=len(WORDS) + 5)
    model_cfg['tokenizer'] = tokenizer_dir
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):  # as the Runner
        model = MODELS.build(model_cfg).eval()
    names = [n for n, _ in model.named_modules()]
    rules = [r for r in merge_quant_cfg(cfg)['overrides'] if 'act' in r]
    assert len(rules) == 2  # DRQ post-GELU, RORQ text Linear inputs
    for rule in rules:
        pattern = re.compile(rule['name'])
        assert any(pattern.fullmatch(n) for n in names), rule
    with torch.no_grad():
        out = model.test_step(dict(
            inputs=[torch.zeros(3, 96, 96, dtype=torch.uint8)],
            data_samples=samples(['red car'], [(120, 90)], size=(96, 96),
                                 masks=False)))
    assert out[0].pred_instances.masks.shape == (1, 120, 90)
