"""Every PEFT method: its trainable set and shapes, that only its parameters get gradients, and that the
zero-initialised methods (LoRA, Adapter, AdaptFormer) leave the outputs unchanged at init.
Tiny open_clip ViT / ResNet (random, registered in conftest) and the embedded EfficientNet-Lite0 architecture."""
import types

import pytest
import torch

from finessl_lab.models import apply_peft, build_backbone
from finessl_lab.models.peft import PEFTS_BY_FAMILY

from conftest import TINY_RN, TINY_VIT

WIDTH, LAYERS = 64, 2  # the tiny ViT of conftest


def cfg(backbone=TINY_VIT, peft="linear", **kw):
    base = dict(backbone=backbone, pretrained="none", peft=peft, vpt_tokens=3, lora_rank=4, lora_alpha=8.0,
                adapter_dim=5, adaptformer_scale=0.1, tune_blocks=1)
    base.update(kw)
    return types.SimpleNamespace(**base)


def built(backbone, peft, **kw):
    torch.manual_seed(0)
    bb = build_backbone(cfg(backbone, peft, **kw))
    with torch.no_grad():  # non-trivial biases so that BitFit / SSF are exercised
        for n, p in bb.named_parameters():
            if n.endswith("bias"):
                p.add_(0.05 * torch.randn_like(p))
    ref = None
    x = torch.randn(2, 3, *((64, 64) if backbone == TINY_RN else (32, 32)), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = bb(x)
    params = apply_peft(bb, cfg(backbone, peft, **kw), generator=torch.Generator().manual_seed(0))
    return bb, params, x, ref


def trainable(bb):
    return {n for n, p in bb.named_parameters() if p.requires_grad}


def check_gradients_only_on(bb, params, x):
    if not params:
        assert not bb(x).requires_grad
        return
    bb.zero_grad(set_to_none=True)
    bb(x).pow(2).sum().backward()
    ids = {id(p) for p in params}
    got = [n for n, p in bb.named_parameters() if p.grad is not None]
    assert all(id(dict(bb.named_parameters())[n]) in ids for n in got), got
    if params:
        assert got, "no PEFT parameter received a gradient"


VIT_EXPECTED = {
    # peft -> (number of trainable tensors, number of trainable scalars)
    "vpt_deep": (1, LAYERS * 3 * WIDTH),
    "vpt_shallow": (1, 3 * WIDTH),
    "vpt_last": (1, 3 * WIDTH),
    "lora": (4 * LAYERS, LAYERS * 4 * 4 * WIDTH),
    "adapter": (4 * LAYERS, LAYERS * (WIDTH * 5 + 5 + 5 * WIDTH + WIDTH)),
    "adaptformer": (4 * LAYERS, LAYERS * (WIDTH * 5 + 5 + 5 * WIDTH + WIDTH)),
    "linear": (0, 0),
}


@pytest.mark.parametrize("peft", PEFTS_BY_FAMILY["vit"])
def test_vit_every_peft(tiny_clip_configs, peft):
    bb, params, x, ref = built(TINY_VIT, peft)
    assert bb.peft == peft and len(params) == len({id(p) for p in params})
    assert trainable(bb) == {n for n, p in bb.named_parameters() if any(p is q for q in params)}
    assert not any(n.startswith("clip.transformer.") or n.startswith("clip.token_embedding") for n in trainable(bb))
    if peft in VIT_EXPECTED:
        assert (len(params), sum(p.numel() for p in params)) == VIT_EXPECTED[peft]
    if peft == "full":
        assert sum(p.numel() for p in params) == sum(p.numel() for p in bb.clip.visual.parameters())
    if peft == "last_k":
        assert trainable(bb) == {n for n, _ in bb.named_parameters()
                                 if n.startswith("clip.visual.transformer.resblocks.1.") or n.startswith("clip.visual.ln_post.")}
    if peft in ("lora", "adapter", "adaptformer", "linear", "full", "last_k", "bitfit", "ssf"):
        torch.testing.assert_close(bb(x), ref, atol=1e-5, rtol=1e-5)  # unchanged at init
    check_gradients_only_on(bb, params, x)


@pytest.mark.parametrize("peft", ["lora", "adapter", "adaptformer"])
def test_zero_init_branches_change_outputs_once_trained(tiny_clip_configs, peft):
    bb, params, x, ref = built(TINY_VIT, peft)
    with torch.no_grad():
        for p in params:
            if p.abs().sum() == 0:  # B of LoRA, up of the bottlenecks (random: a per-channel constant would
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))  # vanish in the next LayerNorm)
    assert not torch.allclose(bb(x), ref, atol=1e-4)


def test_lora_only_touches_q_and_v(tiny_clip_configs):
    bb, params, x, _ = built(TINY_VIT, "lora")
    attn = bb.clip.visual.transformer.resblocks[0].attn
    w0 = attn.parametrizations.in_proj_weight.original.detach().clone()
    with torch.no_grad():
        for p in params:
            p.fill_(0.1)
    delta = attn.in_proj_weight.detach() - w0
    q, k, v = delta.chunk(3)
    assert q.abs().sum() > 0 and v.abs().sum() > 0 and k.abs().sum() == 0
    # (alpha / r) * B @ A with A, B all 0.1: 2 * r * 0.01 = 0.08 everywhere
    torch.testing.assert_close(q, torch.full_like(q, 2 * 4 * 0.01))


def test_vpt_last_and_lengths(tiny_clip_configs):
    bb, params, x, ref = built(TINY_VIT, "vpt_last", vpt_tokens=7)
    assert params[0].shape == (1, 7, WIDTH) and bb.vpt_mode == "last"
    assert not torch.allclose(bb(x), ref, atol=1e-5)


CNN_BACKBONES = [TINY_RN, "efficientnet_lite0"]


@pytest.mark.parametrize("backbone", CNN_BACKBONES)
@pytest.mark.parametrize("peft", PEFTS_BY_FAMILY["cnn"])
def test_cnn_every_peft(tiny_clip_configs, backbone, peft):
    bb, params, x, ref = built(backbone, peft)
    assert trainable(bb) == {n for n, p in bb.named_parameters() if any(p is q for q in params)}
    root = {n for n, _ in bb.peft_root.named_parameters()}
    if peft == "full":
        assert sum(p.numel() for p in params) == sum(p.numel() for p in bb.peft_root.parameters())
    if peft == "bn":
        assert all(n.endswith(("weight", "bias")) for n in trainable(bb)) and len(params) % 2 == 0
    if peft == "last_k":  # tune_blocks=1: the top unit only
        top = bb.blocks()[-1]
        assert {id(p) for p in params} == {id(p) for p in top.parameters()}
    assert len(root) > 0
    check_gradients_only_on(bb, params, x)


def test_last_k_counts_blocks_and_rejects_too_many(tiny_clip_configs):
    from finessl_lab.errors import UserError

    bb, params, _, _ = built("efficientnet_lite0", "last_k", tune_blocks=3)
    units = bb.blocks()
    assert len(units) == 18  # stem, 16 inverted-residual blocks, head
    assert {id(p) for p in params} == {id(p) for u in units[-3:] for p in u.parameters()}
    with pytest.raises(UserError, match="tune_blocks=99"):
        built("efficientnet_lite0", "last_k", tune_blocks=99)


def test_lp_ft_probes_first_then_tunes(tiny_clip_configs):
    """LP-FT: during the first lp_steps training forwards the backbone gets no gradient, then it does; the
    counter is part of the trainable state (so a resumed run continues the schedule)."""
    from finessl_lab.models import build_model

    c = cfg(TINY_VIT, "full", head_init="random", logit_scale=10.0, learn_scale=False, lp_steps=2)
    model = build_model(c, 3, ["a", "b", "c"], generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 32, 32)
    model.train()
    got = []
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
        got.append(any(p.grad is not None for p in model.backbone.peft_parameters))
    assert got == [False, False, True]
    sd = model.trainable_state_dict()
    assert int(sd["lp_steps_done"]) == 3
    model.load_trainable_state_dict({**sd, "lp_steps_done": torch.tensor(1)})
    assert int(model.lp_steps_done) == 1


@pytest.mark.parametrize("peft", ["vpt_deep", "lora", "adaptformer", "last_k"])
def test_timm_vit_backbone_and_pefts(peft):
    """A timm ViT (random init, a fixture) through model.backbone=timm:<name>: same features as timm's own
    pre-logits forward, and the PEFTs act on it like on the open_clip ViT."""
    bb = build_backbone(cfg("timm:vit_tiny_patch16_224", "linear"))
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = bb.net.forward_head(bb.net.forward_features(x), pre_logits=True)
        torch.testing.assert_close(bb(x), ref)
    bb.peft = None
    params = apply_peft(bb, cfg("timm:vit_tiny_patch16_224", peft), generator=torch.Generator().manual_seed(0))
    assert trainable(bb) == {n for n, p in bb.named_parameters() if any(p is q for q in params)}
    if peft == "lora":
        assert len(params) == 4 * len(bb.net.blocks)
    check_gradients_only_on(bb, params, x)
