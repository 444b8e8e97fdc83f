"""RORQ where PTQ4RIS puts it: the inputs of the text encoder's Linear
layers, measured on the real all-MiniLM-L6-v2 with the mnist_ref demo
expressions.

Only the input quantizers of the encoder's Linear layers (query, key,
value and the three ``dense``) are studied: weights at 16 bits per output
channel (min/max; alone 80.6 dB on MiniLM, far above the activation
error), the
attention matmuls and softmax in FP, the pooler and the embeddings in FP.
Per bit width the input quantizers are

- plain per-tensor asymmetric uniform, ``MinMaxObserver``;
- plain per-tensor asymmetric uniform, ``PercentileSearchObserver`` (the
  generic default of ``quant_cfg.act``);
- ``OutlierReorderQuantizer(max_groups=10)`` (RORQ).

The metric is the SQNR (dB) of ``last_hidden_state`` against the FP model
over the valid (unmasked) tokens. Per layer the study also reports the
groups RORQ found, the outlier strength of the FP input (max / median of
the channel maxima max |x_c| over the calibration tokens, padding
included, as the observers see them) and the SQNR of the layer's input
alone (its quantizer's output against its input, in the quantized model).

    python -m mmptq.tools.analyze --rorq-study
"""
import copy
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log
from torch import Tensor, nn
from transformers import AutoTokenizer, BertModel

from mmptq.core import quantize_model
from mmptq.datasets.minilm import minilm_dir
from mmptq.datasets.refer import load_refs
from mmptq.quantizers import OutlierReorderQuantizer
from .analyze import db, sqnr_db

#: the study's input quantizers of the Linear layers (``quant_cfg.act``)
METHODS: Dict[str, dict] = {
    'plain minmax': dict(type='UniformQuantizer', granularity='tensor',
                         observer=dict(type='MinMaxObserver')),
    'plain percentile': dict(type='UniformQuantizer', granularity='tensor',
                             observer=dict(type='PercentileSearchObserver')),
    'RORQ': dict(type='OutlierReorderQuantizer', max_groups=10),
}
#: the Linear layers of a HF BertModel's encoder
ENCODER_LINEAR = r'(.*\.)?encoder\.layer\.\d+\..*'
REFS = 'mnist_ref/refs(unc).p'


def study_quant_cfg(bits: int, act: dict) -> dict:
    """The quant_cfg isolating the input quantizers of the encoder's
    Linear layers: ``act`` at ``bits`` on them, weights at 16 bits per
    channel, attention matmuls and softmax FP, everything else (the
    pooler) skipped.

    Args:
        bits: the activation bit width.
        act: the input quantizer dict (a value of :data:`METHODS`).
    """
    return dict(
        w_bits=16, a_bits=bits,
        weight=dict(type='UniformQuantizer', granularity='channel',
                    observer=dict(type='MinMaxObserver')),
        act=copy.deepcopy(act),
        attn=dict(matmul=False, softmax=None),
        overrides=[dict(name='.*', skip=True),
                   dict(name=ENCODER_LINEAR, skip=False)])


def tokenize(tokenizer, texts: Sequence[str],
             max_tokens: int = 20) -> Tuple[Tensor, Tensor]:
    """Token ids and attention mask (N, ``max_tokens``) as
    ``mmptq.models.LAVT.tokenize``: [CLS] text [SEP], the first
    ``max_tokens`` kept, padded with the pad id (mask 0).

    Args:
        tokenizer: a HF tokenizer.
        texts: the expressions.
        max_tokens: the length of every row.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(texts), max_tokens), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, text in enumerate(texts):
        row = tokenizer(text, add_special_tokens=True)['input_ids']
        row = row[:max_tokens]
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return ids, mask


def text_batches(ids: Tensor, mask: Tensor,
                 batch_size: int) -> List[dict]:
    """Keyword batches (``input_ids``, ``attention_mask``) of a BertModel.

    Args:
        ids: token ids (N, L).
        mask: attention mask (N, L).
        batch_size: rows per batch.
    """
    return [dict(input_ids=ids[i:i + batch_size],
                 attention_mask=mask[i:i + batch_size])
            for i in range(0, len(ids), batch_size)]


def demo_expressions(data_root: str = 'data',
                     num_calib: int = 32) -> Tuple[List[str], List[str]]:
    """(calibration, evaluation) expressions of the mnist_ref demo: the
    first ``num_calib`` distinct train-split expressions (in the order of
    the refs), and every val-split expression.

    Args:
        data_root: the data root of ``make data``.
        num_calib: the number of calibration expressions.
    """
    refs = load_refs(f'{data_root}/{REFS}')
    train = list(dict.fromkeys(s['raw'] for r in refs
                               if r['split'] == 'train'
                               for s in r['sentences']))
    val = [s['raw'] for r in refs if r['split'] == 'val'
           for s in r['sentences']]
    return train[:num_calib], val


def hidden_states(model: nn.Module, batches: Sequence[dict]) -> List[Tensor]:
    """``last_hidden_state`` of every batch, its padding rows zeroed (they
    count neither as signal nor as noise in the SQNR).

    Args:
        model: a HF BertModel (FP or quantized).
        batches: :func:`text_batches`.
    """
    out = []
    with torch.no_grad():
        for b in batches:
            h = model(**b).last_hidden_state
            out.append(h * b['attention_mask'][..., None].to(h.dtype))
    return out


def linear_names(model: nn.Module) -> List[str]:
    """The encoder's Linear layers (the ones the study quantizes)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and 'encoder.layer.' in n]


def channel_maxima(model: nn.Module, names: Sequence[str],
                   batches: Sequence[dict]) -> Dict[str, Tensor]:
    """max |x_c| per input channel of the Linear layers ``names`` over the
    ``batches`` (every token, padding included: what the observers see).

    Args:
        model: the FP model.
        names: Linear layers of ``model``.
        batches: the calibration batches.
    """
    stats: Dict[str, Tensor] = {}
    handles = []
    for name in names:

        def hook(mod, args, name=name):
            m = args[0].detach().abs().flatten(0, -2).amax(0)
            stats[name] = m if name not in stats else \
                torch.maximum(stats[name], m)

        handles.append(model.get_submodule(name).register_forward_pre_hook(
            hook))
    try:
        with torch.no_grad():
            for b in batches:
                model(**b)
    finally:
        for h in handles:
            h.remove()
    return stats


def input_sqnr(model: nn.Module, names: Sequence[str],
               batches: Sequence[dict]) -> Tuple[List[Tensor], Dict[str, float]]:
    """:func:`hidden_states` of the quantized ``model`` and, in the same
    forwards, the SQNR (dB) of each quantized Linear's input quantizer
    alone: its output against its input, over the valid tokens.

    Args:
        model: the quantized model.
        names: its Linear layers (with an ``input_quantizer``).
        batches: :func:`text_batches`.
    """
    sums = {n: [0.0, 0.0] for n in names}
    valid: List[Tensor] = []
    handles = []
    for name in names:
        mod = model.get_submodule(name)

        def hook(mod, args, name=name):
            x = args[0].detach()
            m = valid[0][..., None].to(x.dtype)
            err = (mod.input_quantizer(x) - x) * m
            sums[name][0] += float((x * m).double().pow(2).sum())
            sums[name][1] += float(err.double().pow(2).sum())

        handles.append(mod.register_forward_pre_hook(hook))
    hidden = []
    try:
        for b in batches:
            valid[:] = [b['attention_mask']]
            hidden += hidden_states(model, [b])
    finally:
        for h in handles:
            h.remove()
    return hidden, {n: db(s, e) for n, (s, e) in sums.items()}


@dataclass
class RORQStudy:
    """What :func:`rorq_text_encoder_study` measured.

    ``rows``: dict(bits, method, sqnr, calib_s, eval_s) per bit width and
    method (the seconds of ``quantize_model`` and of the evaluation).
    ``layers``: per Linear layer dict(name, channels, ratio (max / median
    of the FP channel maxima), top (the largest channel maxima), groups
    {bits: RORQ's groups}, input_sqnr {(bits, method): dB}).
    """
    rows: List[dict] = field(default_factory=list)
    layers: List[dict] = field(default_factory=list)

    def sqnr(self, bits: int, method: str) -> float:
        """The output SQNR (dB) of ``method`` at ``bits``."""
        return next(r['sqnr'] for r in self.rows
                    if r['bits'] == bits and r['method'] == method)

    def groups(self, layer: str, bits: int) -> int:
        """The number of groups RORQ found for ``layer`` at ``bits``."""
        return next(r['groups'][bits] for r in self.layers
                    if r['name'] == layer)

    def markdown(self) -> str:
        """The SQNR table (bits × method) and the per-layer table."""
        bits = sorted({r['bits'] for r in self.rows}, reverse=True)
        methods = list(dict.fromkeys(r['method'] for r in self.rows))
        lines = ['| bits | ' + ' | '.join(f'{m} dB' for m in methods) + ' |',
                 '|---|' + '---|' * len(methods)]
        for b in bits:
            lines.append(f'| A{b} | ' + ' | '.join(
                f'{self.sqnr(b, m):.2f}' for m in methods) + ' |')
        low = bits[-1]
        lines += ['', f'| layer | C | max/median | groups '
                  f'({"/".join(f"A{b}" for b in bits)}) | input dB at A{low}: '
                  + ' / '.join(methods) + ' |',
                  '|---|---|---|---|---|']
        for r in self.layers:
            lines.append(
                f"| {r['name']} | {r['channels']} | {r['ratio']:.1f} | "
                + '/'.join(str(r['groups'][b]) for b in bits) + ' | '
                + ' / '.join(f"{r['input_sqnr'][(low, m)]:.1f}"
                             for m in methods) + ' |')
        return '\n'.join(lines)


def rorq_text_encoder_study(model: nn.Module, calib: Sequence[dict],
                            test: Sequence[dict],
                            bits: Sequence[int] = (8, 6, 4),
                            methods: Optional[Dict[str, dict]] = None
                            ) -> RORQStudy:
    """Quantize the inputs of ``model``'s encoder Linear layers with each
    method at each bit width (:func:`study_quant_cfg`) and measure the
    SQNR of ``last_hidden_state`` against FP over the valid tokens.

    Args:
        model: a HF BertModel (eval mode; it is not modified).
        calib: calibration batches (:func:`text_batches`).
        test: evaluation batches.
        bits: the activation bit widths.
        methods: name -> input quantizer dict (default :data:`METHODS`).
    """
    methods = METHODS if methods is None else methods
    model.eval()
    names = linear_names(model)
    ref = hidden_states(model, test)
    maxima = channel_maxima(model, names, calib)
    study = RORQStudy()
    layers = {}
    for n in names:
        m = maxima[n]
        layers[n] = dict(name=n, channels=int(m.numel()),
                         ratio=float(m.max() / m.median().clamp(min=1e-12)),
                         top=[round(float(v), 2) for v in
                              m.topk(min(3, m.numel())).values],
                         groups={}, input_sqnr={})
    for b in bits:
        for method, act in methods.items():
            start = time.perf_counter()
            qmodel, _ = quantize_model(copy.deepcopy(model),
                                       study_quant_cfg(b, act), list(calib))
            calib_s = time.perf_counter() - start
            hidden, local = input_sqnr(qmodel, names, test)
            study.rows.append(dict(
                bits=b, method=method, sqnr=sqnr_db(ref, hidden),
                calib_s=calib_s,
                eval_s=time.perf_counter() - start - calib_s))
            print_log(f'rorq_study: A{b} {method}: '
                      f'{study.rows[-1]["sqnr"]:.2f} dB (calibration '
                      f'{calib_s:.0f} s)', logger='current')
            for n, v in local.items():
                layers[n]['input_sqnr'][(b, method)] = v
            for n in names:
                q = qmodel.get_submodule(n).input_quantizer
                if isinstance(q, OutlierReorderQuantizer):
                    layers[n]['groups'][b] = int(q.group.max()) + 1
    study.layers = list(layers.values())
    return study


def load_minilm(data_root: str = 'data') -> Tuple[nn.Module, object]:
    """(the pretrained all-MiniLM-L6-v2 BertModel with eager attention, in
    eval mode; its tokenizer), offline from :func:`minilm_dir`.

    Args:
        data_root: the data root of ``make data``.
    """
    path = minilm_dir(data_root)
    model = BertModel.from_pretrained(path, attn_implementation='eager',
                                      local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def rorq_study(data_root: str = 'data',
               bits: Sequence[int] = (8, 6, 4),
               num_calib: int = 32,
               max_tokens: int = 20,
               batch_size: int = 4) -> RORQStudy:
    """:func:`rorq_text_encoder_study` on the real MiniLM text encoder:
    calibration on ``num_calib`` train expressions of the mnist_ref demo,
    evaluation on all its val expressions (:func:`demo_expressions`),
    tokenized as LAVT does (``max_tokens``, padded, attention mask).

    Args:
        data_root: the data root of ``make data`` (MiniLM under
            ``cache/``, the refs under ``mnist_ref/``).
        bits: the activation bit widths.
        num_calib: the number of calibration expressions.
        max_tokens: tokens per expression (LAVT's 20).
        batch_size: expressions per calibration batch (quant_cfg.calib's
            default 4).
    """
    model, tokenizer = load_minilm(data_root)
    calib_texts, val_texts = demo_expressions(data_root, num_calib)
    calib = text_batches(*tokenize(tokenizer, calib_texts, max_tokens),
                         batch_size)
    test = text_batches(*tokenize(tokenizer, val_texts, max_tokens), 64)
    return rorq_text_encoder_study(model, calib, test, bits)
