"""Quantized ops. Weighted ops keep the original Parameters (so
``layer.weight`` and state-dict names are unchanged) and add an input and a
weight quantizer; attention ops quantize the operands of one call."""
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _maybe(quantizer: Optional[nn.Module], x: Tensor) -> Tensor:
    return x if quantizer is None else quantizer(x)


def _tensors(module: nn.Module) -> list:
    """The parameters and buffers of ``module`` and its children, except
    an observer's (statistics, not used when not observing)."""
    out = [t for t in (*module._parameters.values(),
                       *module._buffers.values()) if t is not None]
    for name, child in module._modules.items():
        if child is not None and name != 'observer':
            out += _tensors(child)
    return out


def _weight_state(weight: Tensor, quantizer: nn.Module) -> tuple:
    """What Q_w(W) depends on: W's storage and version, the quantizer
    object, its tensors with their versions, and its plain attributes
    (bits, flags such as AdaRound's ``soft``, a patched ``forward``). The
    tensors are held, so their identities cannot be reused while the
    state is kept; ``W.detach()`` holds W's storage, whose address then
    changes if ``W.data`` is replaced. (In-place edits through ``W.data``
    bypass version counting: call ``forget_quantized_weights`` after them.)
    """
    tensors = tuple((t, t._version) for t in _tensors(quantizer))
    attrs = tuple((k, v) for k, v in vars(quantizer).items()
                  if isinstance(v, (bool, int, float, str)))
    return (weight.detach(), weight.data_ptr(), weight._version, quantizer,
            vars(quantizer).get('forward'), tensors, attrs)


def _same_state(a: tuple, b: tuple) -> bool:
    (_, ptr_a, ver_a, q_a, fw_a, ts_a, at_a) = a
    (_, ptr_b, ver_b, q_b, fw_b, ts_b, at_b) = b
    return (ptr_a == ptr_b and ver_a == ver_b and q_a is q_b
            and fw_a is fw_b and at_a == at_b and len(ts_a) == len(ts_b)
            and all(x is y and vx == vy
                    for (x, vx), (y, vy) in zip(ts_a, ts_b)))


def forget_quantized_weights(model: nn.Module) -> None:
    """Drop the quantized weights kept for evaluation (see
    ``QuantWeightMixin.quant_weight``): needed only after editing weights
    in place through ``.data``, which PyTorch does not version."""
    for m in model.modules():
        m.__dict__.pop('_weight_cache', None)


class QuantWeightMixin:
    """y = op(Q_a(x), Q_w(W)): the wrapped op with a quantized input and a
    quantized weight. Either quantizer may be None (kept in FP)."""

    kind = 'weighted'
    weight_ch_axis = 0

    def attach(self, weight_quantizer: Optional[nn.Module],
               input_quantizer: Optional[nn.Module]) -> None:
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer

    def quant_weight(self) -> Tensor:
        """Q_w(W). Without autograd (evaluation) the result is kept and
        reused while W and the quantizer are unchanged (see
        :func:`_weight_state`): a frozen weight is quantized once, not on
        every forward. Calibration, gradients and traces compute it anew."""
        q = self.weight_quantizer
        if q is None:
            return self.weight
        if (q.observing or torch.is_grad_enabled() or torch.jit.is_tracing()
                or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling()):
            self.__dict__.pop('_weight_cache', None)
            return q(self.weight)
        state = _weight_state(self.weight, q)
        cached = self.__dict__.get('_weight_cache')
        if cached is None or not _same_state(cached[0], state):
            cached = self.__dict__['_weight_cache'] = (state, q(self.weight))
        return cached[1]

    def calibrate_weight(self) -> None:
        """Set the weight quantizer's parameters from the current weight
        (weights need no data; call again after a transform changes W)."""
        q = self.weight_quantizer
        if q is None:
            return
        observing, q.observing = q.observing, True
        q.observer.reset()
        with torch.no_grad():
            q(self.weight)
        q.observing = observing

    def forward(self, x: Tensor) -> Tensor:
        return self.op(_maybe(self.input_quantizer, x), self.quant_weight())


class QuantLinear(QuantWeightMixin, nn.Linear):
    kind = 'linear'
    functional = staticmethod(F.linear)  # the op of the parent's forward

    @classmethod
    def from_float(cls, mod: nn.Linear) -> 'QuantLinear':
        new = cls(mod.in_features, mod.out_features, bias=mod.bias is not None,
                  device='meta')
        new.weight, new.bias = mod.weight, mod.bias
        return new

    def op(self, x: Tensor, w: Tensor) -> Tensor:
        return F.linear(x, w, self.bias)


class _QuantConvNd(QuantWeightMixin):

    @classmethod
    def from_float(cls, mod: nn.Module) -> nn.Module:
        new = cls(mod.in_channels, mod.out_channels, mod.kernel_size,
                  stride=mod.stride, padding=mod.padding,
                  dilation=mod.dilation, groups=mod.groups,
                  bias=mod.bias is not None, padding_mode=mod.padding_mode,
                  device='meta')
        new.weight, new.bias = mod.weight, mod.bias
        return new

    def op(self, x: Tensor, w: Tensor) -> Tensor:
        return self._conv_forward(x, w, self.bias)


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    kind = 'conv1d'
    functional = staticmethod(F.conv1d)


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    kind = 'conv2d'
    functional = staticmethod(F.conv2d)


class QuantConv3d(_QuantConvNd, nn.Conv3d):
    kind = 'conv3d'
    functional = staticmethod(F.conv3d)


class QuantConvTranspose2d(QuantWeightMixin, nn.ConvTranspose2d):
    kind = 'conv_transpose2d'
    functional = staticmethod(F.conv_transpose2d)
    weight_ch_axis = 1  # weight is (in, out / groups, kh, kw)

    @classmethod
    def from_float(cls, mod: nn.ConvTranspose2d) -> 'QuantConvTranspose2d':
        new = cls(mod.in_channels, mod.out_channels, mod.kernel_size,
                  stride=mod.stride, padding=mod.padding,
                  output_padding=mod.output_padding, groups=mod.groups,
                  bias=mod.bias is not None, dilation=mod.dilation,
                  padding_mode=mod.padding_mode, device='meta')
        new.weight, new.bias = mod.weight, mod.bias
        return new

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        output_padding = self._output_padding(x, output_size, self.stride,
                                              self.padding, self.kernel_size,
                                              2, self.dilation)
        return F.conv_transpose2d(
            _maybe(self.input_quantizer, x), self.quant_weight(), self.bias,
            self.stride, self.padding, output_padding, self.groups,
            self.dilation)


class QuantMatMul(nn.Module):
    """out = f(Q_a(a), Q_b(b)) for one matmul call site (f = the function
    the model called: matmul, bmm, ...)."""

    kind = 'matmul'

    def __init__(self, quantizer_a: Optional[nn.Module],
                 quantizer_b: Optional[nn.Module]) -> None:
        super().__init__()
        self.quantizer_a = quantizer_a
        self.quantizer_b = quantizer_b

    def forward(self, func: Callable, a: Tensor, b: Tensor, *args,
                **kwargs) -> Tensor:
        return func(_maybe(self.quantizer_a, a), _maybe(self.quantizer_b, b),
                    *args, **kwargs)


class QuantSoftmax(nn.Module):
    """p̂ = Q(softmax(x)): the post-Softmax activation quantizer; a
    quantizer with ``takes_logits`` (Log-Int-Softmax) computes the softmax
    itself: p̂ = Q(x) over the last dim."""

    kind = 'softmax'

    def __init__(self, quantizer: Optional[nn.Module]) -> None:
        super().__init__()
        self.quantizer = quantizer

    def forward(self, func: Callable, *args, **kwargs) -> Tensor:
        if not getattr(self.quantizer, 'takes_logits', False):
            return _maybe(self.quantizer, func(*args, **kwargs))
        # softmax(input, dim, ...) / Tensor.softmax(dim, ...)
        x = args[0]
        dim = args[1] if len(args) > 1 else kwargs.get('dim')
        if dim is None:
            raise ValueError('a softmax without an explicit dim cannot be '
                             'replaced by a quantized softmax')
        out = self.quantizer(x.movedim(dim, -1)).movedim(-1, dim)
        dtype = kwargs.get('dtype') or next(
            (a for a in args[2:] if isinstance(a, torch.dtype)), None)
        return out if dtype is None else out.to(dtype)


class QuantLayerNorm(nn.LayerNorm):
    """y = LayerNorm(Q_a(x)): the input of a LayerNorm quantized (FQ-ViT
    quantizes the residual stream there, with a Power-of-Two Factor);
    keeps the original affine Parameters. The residual branch itself is
    not quantized (only this LayerNorm's copy of its input)."""

    kind = 'layernorm'

    @classmethod
    def from_float(cls, mod: nn.LayerNorm) -> 'QuantLayerNorm':
        new = cls(mod.normalized_shape, eps=mod.eps,
                  elementwise_affine=mod.elementwise_affine, device='meta')
        new.weight, new.bias = mod.weight, mod.bias
        return new

    def attach(self, input_quantizer: Optional[nn.Module]) -> None:
        self.input_quantizer = input_quantizer

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(_maybe(self.input_quantizer, x),
                            self.normalized_shape, self.weight, self.bias,
                            self.eps)


class QuantSDPA(nn.Module):
    """``F.scaled_dot_product_attention`` computed explicitly with quantized
    operands: Q̂(softmax(Q_q(q)·Q_k(k)ᵀ·scale + mask)) · Q_v(v)."""

    kind = 'sdpa'

    def __init__(self, qk: QuantMatMul, softmax: QuantSoftmax,
                 av: QuantMatMul) -> None:
        super().__init__()
        self.qk, self.softmax, self.av = qk, softmax, av

    def forward(self,
                func: Callable,
                query: Tensor,
                key: Tensor,
                value: Tensor,
                attn_mask: Optional[Tensor] = None,
                dropout_p: float = 0.0,
                is_causal: bool = False,
                scale: Optional[float] = None,
                enable_gqa: bool = False) -> Tensor:
        L, S = query.shape[-2], key.shape[-2]
        scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            rep = query.shape[-3] // key.shape[-3]
            key = key.repeat_interleave(rep, dim=-3)
            value = value.repeat_interleave(rep, dim=-3)
        attn = self.qk(torch.matmul, query, key.transpose(-2, -1)) * scale
        if is_causal:
            causal = torch.ones(L, S, dtype=torch.bool,
                                device=query.device).tril()
            attn = attn.masked_fill(~causal, float('-inf'))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn = attn.masked_fill(~attn_mask, float('-inf'))
            else:
                attn = attn + attn_mask
        attn = self.softmax(torch.softmax, attn, dim=-1)
        if dropout_p > 0.0:
            attn = F.dropout(attn, dropout_p, training=True)
        return self.av(torch.matmul, attn, value)
