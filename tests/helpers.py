"""Helpers shared by the tests: calibrating a quantizer by hand, a
quantized toy ViT, small OpenMMLab backbones, a loopback environment for
gloo."""
import copy
import os
import socket

import torch

from mmptq.apis import quantize_model
from mmptq.core.restore import quant_meta, restore_quantized
from toy_models import TinyViT


def calibrate(quantizer, *batches):
    """Run the batches through ``quantizer`` in observing mode (the
    parameters follow the observer), then stop observing."""
    quantizer.observing = True
    for batch in batches:
        quantizer(batch)
    quantizer.observing = False
    return quantizer


def checkpoint_round_trip(model, summary, fresh, path):
    """Save ``model`` as a quantized checkpoint (state dict + the summary's
    meta) at ``path``, load it into the FP model ``fresh`` as the tools do
    (restore the quantizers, then a strict load) and return ``fresh``."""
    torch.save(dict(state_dict=model.state_dict(),
                    meta=quant_meta(summary)), path)
    ckpt = torch.load(path, weights_only=False)
    restore_quantized(fresh, ckpt['meta'])
    fresh.load_state_dict(ckpt['state_dict'], strict=True)
    return fresh


def assert_onnx_runs_as_module(quantizer, x, path):
    """Export ``quantizer`` alone (legacy exporter) to ``path``, run it in
    ONNX Runtime on ``x`` and assert the output equals the module's."""
    import onnxruntime as ort
    torch.onnx.export(quantizer, (x, ), str(path), dynamo=False)
    sess = ort.InferenceSession(str(path))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), quantizer(x))


def quantized_vit(recon=None, seed=0, **cfg):
    torch.manual_seed(seed)
    model = TinyViT().eval()
    data = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    fp = copy.deepcopy(model)
    q, summary = quantize_model(
        model, dict(w_bits=4, a_bits=4, reconstruction=recon, **cfg), data)
    return fp, q, summary, data


#: small backbones of the OpenMMLab repos: name -> (scope, config, input)
BACKBONES = {
    'mmdet Swin': ('mmdet', dict(
        type='SwinTransformer', embed_dims=32, depths=[2, 2],
        num_heads=[2, 4], window_size=4, out_indices=(0, 1),
        strides=(4, 2), init_cfg=None), (1, 3, 64, 64)),
    'mmdet Swin, padded windows': ('mmdet', dict(
        type='SwinTransformer', embed_dims=32, depths=[2, 2],
        num_heads=[2, 4], window_size=7, out_indices=(0, 1),
        strides=(4, 2), init_cfg=None), (1, 3, 64, 96)),
    'mmpretrain ViT': ('mmpretrain', dict(
        type='VisionTransformer', arch=dict(embed_dims=64, num_layers=2,
                                            num_heads=4,
                                            feedforward_channels=128),
        img_size=32, patch_size=8), (2, 3, 32, 32)),
    'mmpretrain Swin': ('mmpretrain', dict(
        type='SwinTransformer', arch=dict(embed_dims=32, depths=[2, 2],
                                          num_heads=[2, 4]),
        img_size=64, window_size=4, out_indices=(1, ), stage_cfgs=dict(
            downsample_cfg=dict())), (1, 3, 64, 64)),
    'mmseg ViT': ('mmseg', dict(
        type='VisionTransformer', img_size=(32, 32), patch_size=8,
        embed_dims=64, num_layers=2, num_heads=4, mlp_ratio=2,
        out_indices=(1, )), (1, 3, 32, 32)),
    'mmseg Swin': ('mmseg', dict(
        type='SwinTransformer', embed_dims=32, depths=[2, 2],
        num_heads=[2, 4], window_size=4, strides=(4, 2),
        out_indices=(0, 1)), (1, 3, 64, 64)),
}


def loopback_env() -> dict:
    """Environment that keeps gloo on the loopback interface."""
    env = dict(os.environ)
    names = {name for _, name in socket.if_nameindex()}
    for name in ('lo', 'lo0'):
        if name in names:
            env['GLOO_SOCKET_IFNAME'] = name
            break
    env.update(MASTER_ADDR='127.0.0.1', OMP_NUM_THREADS='1')
    return env
