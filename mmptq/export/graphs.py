"""The part of an OpenMMLab model that runs as one ONNX graph."""
from typing import List, Optional, Sequence

from torch import Tensor, nn

from mmptq.quantizers import reset_call_counters


class ExportGraph(nn.Module):
    """``model`` from its preprocessed input tensor to raw outputs:

    - a classifier (mmpretrain ``ImageClassifier``): the class logits;
    - a segmentor (mmseg ``EncoderDecoder``): the decode head's logits;
    - a detector (mmdet): backbone + neck + the dense head's raw outputs
      (per level: scores, box deltas, ...; the RPN head of a two-stage
      detector);
    - any other module: ``model(x)``.

    What stays in Python (``in_python``): the data preprocessor
    (normalisation, padding), and for a detector box decoding
    (``predict_by_feat``), NMS and the RoI heads; for a segmentor the
    resize to the image and the argmax; for a classifier the softmax.

    Args:
        model: a quantized (or FP) model.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.head: Optional[nn.Module] = None
        #: per output of a detector's head, its number of levels
        self.levels: List[int] = []
        if hasattr(model, 'extract_feat') and (
                hasattr(model, 'bbox_head') or hasattr(model, 'rpn_head')):
            self.kind = 'detector'
            two_stage = getattr(model, 'rpn_head', None) is not None
            self.head = model.rpn_head if two_stage else model.bbox_head
            self.in_python = ('data preprocessor, box decoding '
                              '(predict_by_feat), NMS' +
                              (', the RoI heads' if two_stage else ''))
        elif hasattr(model, 'decode_head'):
            self.kind = 'segmentor'
            self.head = model.decode_head
            self.in_python = ('data preprocessor, resize to the image, '
                              'argmax')
        elif hasattr(model, 'extract_feat') and hasattr(model, 'head'):
            self.kind = 'classifier'
            self.head = model.head
            self.in_python = 'data preprocessor, softmax'
        else:
            self.kind = 'module'
            self.in_python = ''

    def forward(self, x: Tensor):
        # the root's pre-hook of a per-call quantized head does not run
        # when the head is called from here
        reset_call_counters(self.model)
        if self.head is None:
            return self.model(x)
        out = self.head(self.model.extract_feat(x))
        if self.kind == 'detector':
            out = tuple(out)
            self.levels = [len(per_level) for per_level in out]
        return out

    def output_names(self, outputs) -> List[str]:
        """Names of the flattened outputs: ``logits``, ``seg_logits``, or
        ``out<i>_level<j>`` for output i of the head at FPN level j."""
        if self.kind == 'classifier':
            return ['logits']
        if self.kind == 'segmentor':
            return ['seg_logits']
        if self.kind == 'detector':
            return [f'out{i}_level{j}' for i, per_level in enumerate(outputs)
                    for j in range(len(per_level))]
        return ['output'] if isinstance(outputs, Tensor) else [
            f'output_{i}' for i in range(len(outputs))]

    def unflatten(self, flat: Sequence[Tensor]):
        """The head's output structure from the flat graph outputs."""
        if self.kind != 'detector':
            return flat[0] if len(flat) == 1 else tuple(flat)
        out, start = [], 0
        for n in self.levels:
            out.append(list(flat[start:start + n]))
            start += n
        return tuple(out)
