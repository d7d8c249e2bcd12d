"""Partial feature cache: the top k blocks of the embedded EfficientNet run on cached activations."""
import types

import pytest
import torch

from finessl_lab.models import apply_peft, build_backbone
from finessl_lab.models.backbones import TopBlocks


@pytest.fixture(scope="module")
def effnet():
    torch.manual_seed(0)
    return build_backbone(types.SimpleNamespace(backbone="efficientnet_lite0", pretrained="none", peft="linear"))


@pytest.mark.parametrize("k", [1, 3, 18])
def test_top_blocks_on_activations_equal_the_full_forward(effnet, k):
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = effnet(x)
        top = TopBlocks(effnet, k)
        part = top(effnet.activations_below(x, k))
    torch.testing.assert_close(part, full, atol=1e-5, rtol=1e-5)


def test_peft_on_top_blocks_touches_only_them():
    torch.manual_seed(0)
    bb = build_backbone(types.SimpleNamespace(backbone="efficientnet_lite0", pretrained="none", peft="linear"))
    top = TopBlocks(bb, 2)
    params = apply_peft(top, types.SimpleNamespace(peft="full", tune_blocks=2))
    ids = {id(p) for u in bb.blocks()[-2:] for p in u.parameters()}
    assert {id(p) for p in params} == ids
    a = torch.randn(2, 192, 2, 2)
    top(a).sum().backward()
    assert all(p.grad is not None for p in params)
    assert all(p.grad is None for p in bb.net.conv_stem.parameters())
    with pytest.raises(Exception, match="tune_blocks=19"):
        TopBlocks(bb, 19)


def test_embedded_bn_tuning_from_partial_cache_trains(tmp_path):
    from finessl_lab.presets import resolve
    from finessl_lab.trainer import Trainer

    cfg = resolve("embedded", sets=["data.subsample_per_class=10", "run.max_steps=4", "run.steps_per_epoch=2",
                                    "run.progress=false", "model.peft=bn", "model.tune_blocks=2", "optim.mu=2",
                                    "data.image_size=32", "data.resize=32", "data.crop_padding=4",
                                    "run.feature_views=1", "optim.backbone_lr=0.01"])
    trainer = Trainer(cfg, tmp_path / "run")
    model = trainer.exp.model
    bb_ids = {id(p) for p in model.backbone.peft_parameters}
    lrs = {g["lr"] for g in trainer.optimizer.param_groups if all(id(p) in bb_ids for p in g["params"])}
    heads = {g["lr"] for g in trainer.optimizer.param_groups if not any(id(p) in bb_ids for p in g["params"])}
    assert lrs == {0.01} and heads == {cfg.optim.lr}  # optim.backbone_lr: the tuned blocks only
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert before and all("units." in n for n in before)
    n_bn = sum(p.numel() for n, p in model.backbone.named_parameters() if p.requires_grad)
    assert n_bn == sum(m.weight.numel() * 2 for m in model.backbone.units.modules()
                       if isinstance(m, torch.nn.BatchNorm2d))
    summary = trainer.fit()
    after = dict(model.backbone.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert summary["steps"] == 4 and summary["trainable_params"] == model.num_trainable()


def test_scratch_cnn_baseline_trains_every_parameter_in_image_mode(tmp_path):
    from finessl_lab.errors import UserError
    from finessl_lab.presets import resolve
    from finessl_lab.trainer import Trainer

    cfg = resolve("fig1_embedded_scratch_cnn", sets=["data.subsample_per_class=4", "data.labels_per_class=2",
                                                     "run.max_steps=2", "run.progress=false", "optim.mu=1",
                                                     "optim.batch_size=4", "data.image_size=32", "data.resize=32"])
    trainer = Trainer(cfg, tmp_path / "run")
    bb = trainer.exp.model.backbone
    assert bb.name == "scratch_cnn" and all(p.requires_grad for p in bb.parameters())
    first = bb.net[0][0].weight.detach().clone()
    trainer.fit()
    assert not torch.equal(first, bb.net[0][0].weight)
    from finessl_lab.models.checks import check_model_config

    with pytest.raises(UserError, match="trained from scratch"):
        check_model_config(resolve("fig1_embedded_scratch_cnn", sets=["model.peft=linear"]).model)
