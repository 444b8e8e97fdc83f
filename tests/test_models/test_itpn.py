"""iTPN's fine-tuning classifier (mmptq.models.iTPNFinetuneHiViT) and the
conversion of released iTPN checkpoints to it."""
import argparse
import os.path as osp

import pytest
import torch

pytest.importorskip('mmpretrain')

from mmptq.apis.convert import convert_itpn_checkpoint  # noqa: E402
from mmptq.apis.analyze import build_random_model  # noqa: E402
from mmptq.models.convert_itpn import convert_itpn_state_dict  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
ITPN_B = osp.join(ROOT, 'configs/mmpretrain/itpn/itpn-pixel_hivit-base-p16_in1k.py')
ITPN_L = osp.join(ROOT, 'configs/mmpretrain/itpn/itpn-pixel_hivit-large-p16_in1k.py')


def small_config(tmp_path, embed=64, mlp_depths=(3, 3), depth=2) -> str:
    """ITPN_B shrunk to 64x64 images (4x4 tokens in the main stage)."""
    path = tmp_path / f'itpn_small_{embed}.py'
    path.write_text(
        f"_base_ = '{ITPN_B}'\n"
        'model = dict(backbone=dict(arch=dict(embed_dims=%d, depths=%r, '
        'num_heads=4), img_size=64), '
        'head=dict(num_classes=10, in_channels=%d))\n' %
        (embed, [*mlp_depths, depth], embed))
    return str(path)


def official_state_dict(embed=64, mlp_depths=(3, 3), depth=2, heads=4,
                        tokens=4, classes=10, seed=0) -> dict:
    """Random weights under the key names and shapes of iTPN's own
    ``iTPN`` classifier (its modeling code, written out by hand here):
    m1 MLP blocks, PatchMerge, m2 MLP blocks, PatchMerge, attention
    blocks, fc_norm, head; stem MLP ratio 3, main ratio 4."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        'absolute_pos_embed': (1, tokens * tokens, embed),
        'patch_embed.proj.weight': (embed // 4, 3, 4, 4),
        'patch_embed.proj.bias': (embed // 4, ),
        'patch_embed.norm.weight': (embed // 4, ),
        'patch_embed.norm.bias': (embed // 4, ),
    }

    def linear(name, out, inp, bias=True):
        shapes[f'{name}.weight'] = (out, inp)
        if bias:
            shapes[f'{name}.bias'] = (out, )

    def norm(name, dim):
        shapes[f'{name}.weight'] = shapes[f'{name}.bias'] = (dim, )

    i, dim = 0, embed // 4
    for stage_depth in mlp_depths:
        for _ in range(stage_depth):
            norm(f'blocks.{i}.norm2', dim)
            linear(f'blocks.{i}.mlp.fc1', 3 * dim, dim)
            linear(f'blocks.{i}.mlp.fc2', dim, 3 * dim)
            i += 1
        norm(f'blocks.{i}.norm', 4 * dim)
        linear(f'blocks.{i}.reduction', 2 * dim, 4 * dim, bias=False)
        i, dim = i + 1, 2 * dim
    for _ in range(depth):
        norm(f'blocks.{i}.norm1', dim)
        shapes[f'blocks.{i}.attn.relative_position_bias_table'] = (
            (2 * tokens - 1)**2, heads)
        linear(f'blocks.{i}.attn.qkv', 3 * dim, dim)
        linear(f'blocks.{i}.attn.proj', dim, dim)
        norm(f'blocks.{i}.norm2', dim)
        linear(f'blocks.{i}.mlp.fc1', 4 * dim, dim)
        linear(f'blocks.{i}.mlp.fc2', dim, 4 * dim)
        i += 1
    norm('fc_norm', embed)
    linear('head', classes, embed)
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    state['relative_position_index'] = torch.randint(
        0, (2 * tokens - 1)**2, (tokens**2, tokens**2), generator=g)
    return state


def test_backbone_has_the_official_layout(tmp_path):
    model, _ = build_random_model(small_config(tmp_path))
    kinds = [type(b).__name__ + ('+attn' if getattr(b, 'attn', None)
                                 is not None else '')
             for b in model.backbone.blocks]
    assert kinds == ['BlockWithRPE'] * 3 + ['PatchMerge'] + \
        ['BlockWithRPE'] * 3 + ['PatchMerge'] + ['BlockWithRPE+attn'] * 2
    # fc_norm(mean over the main-stage tokens), fed straight to the head
    x = torch.randn(2, 3, 64, 64)
    bb = model.backbone
    tokens = bb.patch_embed(x)
    for blk in bb.blocks[:8]:
        tokens = blk(tokens)
    tokens = tokens[:, :, 0, 0, :] + bb.pos_embed
    for blk in bb.blocks[8:]:
        tokens = blk(tokens, True)
    expected = bb.fc_norm(tokens.mean(1))
    (out, ) = bb(x)
    torch.testing.assert_close(out, expected)
    assert model(x, mode='tensor').shape == (2, 10)


def test_full_size_configs_build_itpn_b_and_l():
    for config, mlp, depth, dim in ((ITPN_B, 3, 24, 512),
                                    (ITPN_L, 2, 40, 768)):
        model, _ = build_random_model(config)
        blocks = model.backbone.blocks
        attn = [b for b in blocks if getattr(b, 'attn', None) is not None]
        assert len(blocks) == 2 * mlp + 2 + depth and len(attn) == depth
        assert attn[0].attn.qkv.in_features == dim
        assert model.backbone.fc_norm.eps == 1e-6
        assert not model.with_neck


def test_convert_official_checkpoint(tmp_path):
    state = official_state_dict()
    src, dst = tmp_path / 'itpn.pth', tmp_path / 'mm.pth'
    # as the official training script saves it: weights under "model",
    # its argparse arguments beside them
    torch.save(dict(model=state, args=argparse.Namespace(model='itpn'),
                    epoch=99), src)
    config = small_config(tmp_path)
    summary = convert_itpn_checkpoint(str(src), str(dst), config=config)
    converted = torch.load(dst, weights_only=True)['state_dict']
    assert summary['tensors'] == len(converted)

    model, _ = build_random_model(config)
    model.load_state_dict(converted, strict=True)
    own = model.state_dict()
    bb = 'backbone.'
    torch.testing.assert_close(own[bb + 'pos_embed'],
                               state['absolute_pos_embed'])
    torch.testing.assert_close(own['head.fc.weight'], state['head.weight'])
    torch.testing.assert_close(own[bb + 'fc_norm.bias'], state['fc_norm.bias'])
    for key, value in state.items():
        if key.startswith(('blocks.', 'patch_embed.')):
            torch.testing.assert_close(own[bb + key], value)
    # the one index buffer feeds every attention block of mmpretrain's HiViT
    for i in (8, 9):
        assert torch.equal(own[f'{bb}blocks.{i}.attn.relative_position_index'],
                           state['relative_position_index'])


def test_convert_refuses_what_is_not_an_itpn_classifier(tmp_path):
    state = official_state_dict()
    with pytest.raises(ValueError, match=r'decoder_embed\.weight'):
        convert_itpn_state_dict({**state,
                                 'decoder_embed.weight': torch.zeros(1)})
    # right names, other size: the config check names the shapes
    src = tmp_path / 'wide.pth'
    torch.save(dict(model=official_state_dict(embed=128)), src)
    with pytest.raises(ValueError, match=r'does not match.*shape mismatch'):
        convert_itpn_checkpoint(str(src), str(tmp_path / 'x.pth'),
                                config=small_config(tmp_path))
    assert not (tmp_path / 'x.pth').exists()
    torch.save(dict(epoch=3, model='itpn_base'), src)
    with pytest.raises(ValueError, match='holds no state dict'):
        convert_itpn_checkpoint(str(src), str(tmp_path / 'x.pth'))


def test_layer_scale_checkpoint_names_the_setting(tmp_path):
    state = official_state_dict()
    for i in (0, 8):  # an MLP-only block has gamma_2 only
        state[f'blocks.{i}.gamma_2'] = torch.ones(16 if i == 0 else 64)
    src = tmp_path / 'ls.pth'
    torch.save(dict(model=state), src)
    with pytest.raises(ValueError, match='layer_scale_init_value'):
        convert_itpn_checkpoint(str(src), str(tmp_path / 'x.pth'),
                                config=small_config(tmp_path))


def test_frozen_stages_freeze_the_rebuilt_blocks():
    # mmpretrain's HiViT itself fails here: its _freeze_stages needs fc_norm
    from mmptq.models import iTPNFinetuneHiViT
    model = iTPNFinetuneHiViT(arch=dict(embed_dims=64, depths=[3, 3, 2],
                                        num_heads=4), img_size=64,
                              frozen_stages=2)
    frozen = [not p.requires_grad for p in model.parameters()]
    expected = {id(p) for m in (model.blocks[0], model.blocks[1],
                                model.patch_embed, model.fc_norm)
                for p in m.parameters()} | {id(model.pos_embed)}
    assert frozen == [id(p) in expected for p in model.parameters()]
