"""Referring expressions for MNIST canvases, in RefCOCO's on-disk format.

``mnist_ref`` (built by :func:`~mmptq.datasets.build_mnist_ref`) is what
mmdet 3.x's ``RefCocoDataset`` reads for RefCOCO (``refcoco/instances.json``
+ ``refcoco/refs(unc).p``): COCO images and annotations (one per digit: box,
RLE mask, category '0'..'9') and a pickled list of refs, each naming one
annotation with 1-3 sentences::

    {'ref_id': 0, 'ann_id': 3, 'image_id': 1, 'split': 'train',
     'category_id': 8, 'file_name': '000001_3.png', 'sent_ids': [0, 1],
     'sentences': [{'raw': 'the seven', 'sent': 'the seven',
                    'tokens': ['the', 'seven'], 'sent_id': 0}, ...]}

Every expression refers to exactly one digit of its picture. It is a
predicate over the digits (geometry from the COCO boxes: centre
``(x + w / 2, y + h / 2)``, size = box height ``h``, image y pointing down)
and is kept only when exactly one digit satisfies it:

``class``
    ``the seven`` / ``the digit seven`` / ``the number 7``: the only 7 in the image.
``position``
    ``the digit on the left`` / ``the leftmost digit`` / ``the top seven``
    (also right, bottom): the digit (of the class, when named; the class then
    occurs at least twice) whose centre is at least :data:`MARGIN` pixels
    further that way than every other candidate's.
``size``
    ``the larger four`` (two fours) / ``the largest digit`` / ``the smaller
    four``: a candidate at least :data:`SIZE_RATIO` times as tall as every
    other candidate (or that much shorter); "larger" with two candidates,
    "largest" with more.
``relation``
    ``the three below the eight`` / ``the digit left of the two`` (also right
    of, above): the anchor's class occurs once; the target is the only
    candidate (a digit of the named class, or any other digit) whose centre
    lies at least :data:`MARGIN` pixels that way from the anchor's and
    within 45 degrees of that direction, and no other candidate lies even
    roughly that way (offset > 0, within about 63 degrees).

Splits (like RefCOCO's, whose testA and testB differ by the kind of
referent): ``train`` (MNIST train digits) and ``val`` use every kind;
``testA`` only ``class`` expressions (the digit's name alone); ``testB``
only spatial / relational ones (``position``, ``size``, ``relation``).
val, testA and testB draw on disjoint MNIST test digits.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: digit names, index = digit
WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven',
         'eight', 'nine')
#: pixels a position / relation must clear (centre to centre)
MARGIN = 8.0
#: height ratio for "larger" / "smaller"
SIZE_RATIO = 1.3
KINDS = ('class', 'position', 'size', 'relation')
REF_SPLITS = ('train', 'val', 'testA', 'testB')
#: the expression kinds each split uses
SPLIT_KINDS: Dict[str, Tuple[str, ...]] = {
    'train': KINDS,
    'val': KINDS,
    'testA': ('class', ),
    'testB': ('position', 'size', 'relation'),
}
#: the RefCOCO file names mmdet's RefCocoDataset is pointed at
ANN_FILE = 'instances.json'
SPLIT_FILE = 'refs(unc).p'
IMG_DIR = 'images'

CLASS_TEXTS = ('the {w}', 'the digit {w}', 'the number {n}')
#: direction -> (sort key over (cx, cy), sentences)
POSITION_TEXTS: Dict[str, Tuple[Callable[[float, float], float],
                                Tuple[str, ...]]] = {
    'left': (lambda cx, cy: cx, ('the {x} on the left', 'the leftmost {x}')),
    'right': (lambda cx, cy: -cx,
              ('the {x} on the right', 'the rightmost {x}')),
    'top': (lambda cx, cy: cy, ('the {x} at the top', 'the top {x}')),
    'bottom': (lambda cx, cy: -cy,
               ('the {x} at the bottom', 'the bottom {x}')),
}
#: (larger?, two candidates?) -> sentences
SIZE_TEXTS = {
    (True, True): ('the larger {x}', 'the bigger {x}'),
    (True, False): ('the largest {x}', 'the biggest {x}'),
    (False, True): ('the smaller {x}', ),
    (False, False): ('the smallest {x}', ),
}
#: relation -> (unit offset direction (dx, dy), sentences)
RELATION_TEXTS = {
    'left': ((-1, 0), ('the {x} left of the {a}',
                       'the {x} to the left of the {a}')),
    'right': ((1, 0), ('the {x} right of the {a}',
                       'the {x} to the right of the {a}')),
    'above': ((0, -1), ('the {x} above the {a}', )),
    'below': ((0, 1), ('the {x} below the {a}', )),
}


@dataclass(frozen=True)
class Digit:
    """A digit of a picture: its class and COCO box ``(x, y, w, h)``."""

    label: int
    bbox: Tuple[float, float, float, float]

    @property
    def cx(self) -> float:
        return self.bbox[0] + self.bbox[2] / 2

    @property
    def cy(self) -> float:
        return self.bbox[1] + self.bbox[3] / 2

    @property
    def height(self) -> float:
        return self.bbox[3]


@dataclass(frozen=True)
class Expression:
    """An unambiguous expression: the index of its digit, kind, text."""

    target: int
    kind: str
    text: str


def _unique(candidates: Sequence[int],
            pred: Callable[[int], bool]) -> Optional[int]:
    hits = [i for i in candidates if pred(i)]
    return hits[0] if len(hits) == 1 else None


def _along(d: Digit, anchor: Digit, direction: Tuple[int, int]) -> Tuple[
        float, float]:
    """(offset along ``direction``, offset across it) of d from anchor."""
    dx, dy = d.cx - anchor.cx, d.cy - anchor.cy
    ux, uy = direction
    return dx * ux + dy * uy, abs(dx * uy - dy * ux)


def relation_holds(d: Digit, anchor: Digit, relation: str,
                   strict: bool = True) -> bool:
    """Whether ``d`` lies ``relation`` ('left', 'right', 'above', 'below')
    of ``anchor``: strictly (at least :data:`MARGIN` along, within 45
    degrees) or roughly (``strict=False``: ahead, within about 63 degrees).

    Args:
        d: the digit tested.
        anchor: the digit it is related to.
        relation: a key of :data:`RELATION_TEXTS`.
        strict: the strict or the rough test.
    """
    along, across = _along(d, anchor, RELATION_TEXTS[relation][0])
    if strict:
        return along >= MARGIN and along >= across
    return along > 0 and 2 * along >= across


def referring_expressions(digits: Sequence[Digit]) -> List[Expression]:
    """Every unambiguous expression (see the module docstring) for the
    digits of one picture, in a fixed order.

    Args:
        digits: the digits of the picture.
    """
    n = len(digits)
    labels = [d.label for d in digits]
    counts = {c: labels.count(c) for c in sorted(set(labels))}
    out: List[Expression] = []

    def add(target: Optional[int], kind: str, texts: Sequence[str],
            **fmt) -> None:
        if target is not None:
            out.extend(Expression(target, kind, t.format(**fmt))
                       for t in texts)

    # class: the only digit of its class
    for c, k in counts.items():
        if k == 1:
            add(labels.index(c), 'class', CLASS_TEXTS, w=WORDS[c], n=c)
    # scopes of position / size: all digits, or a repeated class
    scopes: List[Tuple[str, List[int]]] = []
    if n >= 2:
        scopes.append(('digit', list(range(n))))
    scopes += [(WORDS[c], [i for i in range(n) if labels[i] == c])
               for c, k in counts.items() if k >= 2]
    for x, cand in scopes:
        for key, texts in POSITION_TEXTS.values():
            keys = {i: key(digits[i].cx, digits[i].cy) for i in cand}
            add(_unique(cand, lambda i: all(
                keys[i] + MARGIN <= keys[j] for j in cand if j != i)),
                'position', texts, x=x)
        for larger in (True, False):
            def pred(i: int, larger: bool = larger) -> bool:
                hi = digits[i].height
                return all((hi >= SIZE_RATIO * digits[j].height) if larger
                           else (hi * SIZE_RATIO <= digits[j].height)
                           for j in cand if j != i)
            add(_unique(cand, pred), 'size',
                SIZE_TEXTS[(larger, len(cand) == 2)], x=x)
    # relations to an anchor whose class occurs once
    for b in range(n):
        if counts[labels[b]] != 1:
            continue
        anchor = digits[b]
        rel_scopes = [('digit', [i for i in range(n) if i != b])]
        rel_scopes += [(WORDS[c], [i for i in range(n) if labels[i] == c])
                       for c in counts if c != labels[b]]
        for x, cand in rel_scopes:
            for rel, (_, texts) in RELATION_TEXTS.items():
                t = _unique(cand, lambda i, rel=rel: relation_holds(
                    digits[i], anchor, rel))
                if t is not None and any(relation_holds(
                        digits[j], anchor, rel, strict=False)
                        for j in cand if j != t):
                    t = None  # another candidate is roughly there too
                add(t, 'relation', texts, x=x, a=WORDS[labels[b]])
    return out


def choose_refs(exprs: Sequence[Expression], split: str,
                rng: np.random.Generator, max_refs: int = 2,
                max_sentences: int = 3) -> List[Tuple[int, List[Expression]]]:
    """Pick the referred digits of one picture and their sentences.

    1..``max_refs`` distinct digits that have an expression of a kind of
    ``split`` (:data:`SPLIT_KINDS`), each with 1..``max_sentences``
    distinct sentences; each sentence first draws a kind (among those the
    digit has left), then an expression of it. Returns ``[(digit index,
    expressions)]`` sorted by digit, or ``[]`` when no digit qualifies.

    Args:
        exprs: :func:`referring_expressions` of the picture.
        split: one of :data:`REF_SPLITS`.
        rng: the picture's generator.
        max_refs: most referred digits per picture.
        max_sentences: most sentences per referred digit.
    """
    kinds = SPLIT_KINDS[split]
    pools: Dict[int, Dict[str, List[Expression]]] = {}
    for e in exprs:
        if e.kind in kinds:
            pools.setdefault(e.target, {}).setdefault(e.kind, []).append(e)
    eligible = sorted(pools)
    if not eligible:
        return []
    k = min(int(rng.integers(1, max_refs + 1)), len(eligible))
    targets = sorted(int(t) for t in rng.choice(eligible, k, replace=False))
    out = []
    for t in targets:
        pool = {kind: list(v) for kind, v in pools[t].items()}
        total = sum(len(v) for v in pool.values())
        chosen = []
        for _ in range(min(int(rng.integers(1, max_sentences + 1)), total)):
            left = [kind for kind in KINDS if pool.get(kind)]
            kind = left[int(rng.integers(len(left)))]
            chosen.append(pool[kind].pop(int(rng.integers(len(pool[kind])))))
        out.append((t, chosen))
    return out


def sentence_dict(text: str, sent_id: int) -> dict:
    """A RefCOCO sentence: ``raw``, ``sent`` (lower case), ``tokens``,
    ``sent_id``.

    Args:
        text: the expression.
        sent_id: its id (unique over the dataset).
    """
    sent = ' '.join(text.lower().split())
    return dict(tokens=sent.split(), raw=text, sent_id=sent_id, sent=sent)


def ref_dict(ref_id: int, ann_id: int, image_id: int, category_id: int,
             split: str, texts: Sequence[str], first_sent_id: int,
             image_file: str) -> dict:
    """A RefCOCO ref (the fields of ``refs(unc).p``).

    Args:
        ref_id: the ref's id.
        ann_id: the COCO annotation referred to.
        image_id: its image.
        category_id: its COCO category.
        split: 'train', 'val', 'testA' or 'testB'.
        texts: the sentences.
        first_sent_id: the id of the first sentence (then consecutive).
        image_file: the image's file name (the ref's ``file_name`` is it
            with ``_<ann_id>`` added, as in RefCOCO).
    """
    sents = [sentence_dict(t, first_sent_id + i) for i, t in enumerate(texts)]
    stem, dot, ext = image_file.rpartition('.')
    return dict(sent_ids=[s['sent_id'] for s in sents],
                file_name=f'{stem}_{ann_id}{dot}{ext}', ann_id=ann_id,
                ref_id=ref_id, image_id=image_id, split=split,
                sentences=sents, category_id=category_id)


def write_refs(path: str, refs: List[dict]) -> None:
    """Pickle ``refs`` as RefCOCO's ``refs(unc).p`` (protocol 2, readable
    by the original Python 2 ``refer`` API too; deterministic bytes).

    Args:
        path: the output file.
        refs: :func:`ref_dict` results.
    """
    with open(path, 'wb') as f:
        pickle.dump(refs, f, protocol=2)


def load_refs(path: str) -> List[dict]:
    """Read a ``refs(unc).p``.

    Args:
        path: the pickle.
    """
    with open(path, 'rb') as f:
        return pickle.load(f)
