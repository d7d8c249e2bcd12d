"""Image mode end to end: a tiny randomly initialised open_clip ViT (a test fixture, not a pretrained model)
with VPT-deep, trained on a few embedded MNIST digits through augmentation, the trainer and the CLI, with its
weights read from a local file through the --pretrained PATH code path."""
import json

import open_clip
import pytest
import torch

from finessl_lab.cli import main
from finessl_lab.presets import resolve
from finessl_lab.trainer import Trainer

TINY = ["data.subsample_per_class=3", "data.labels_per_class=1", "data.image_size=32", "data.resize=32",
        "data.crop_padding=4", "data.num_workers=0", "model.peft=vpt_deep", "model.vpt_tokens=2",
        "optim.batch_size=4", "run.epochs=2", "run.steps_per_epoch=2", "run.eval_batch_size=128",
        "run.progress=false"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny_clip_configs):
    torch.manual_seed(0)
    clip = open_clip.create_model(tiny_clip_configs[0], pretrained=None)
    path = tmp_path_factory.mktemp("weights") / "tiny_vit.pt"
    torch.save(clip.state_dict(), path)
    return tiny_clip_configs[0], path


def test_vpt_image_mode_trains_only_prompts_and_heads(weights, tmp_path):
    name, path = weights
    cfg = resolve("embedded", sets=TINY + [f"model.backbone={name}", f"model.pretrained={path}",
                                           "run.feature_cache=false", "algorithm.name=finessl"])
    trainer = Trainer(cfg, tmp_path / "run")
    model = trainer.exp.model
    prompts = model.backbone.prompts.detach().clone()
    frozen = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if not p.requires_grad}
    expected = 2 * 2 * 64 + 2 * (10 * 64 + 1)  # prompts [layers, tokens, width] + two cosine heads (+ scales)
    assert model.num_trainable() == expected
    summary = trainer.fit()
    assert summary["steps"] == 4 and summary["trainable_params"] == expected
    assert not torch.equal(model.backbone.prompts.detach(), prompts), "prompts must learn"
    assert all(torch.equal(p, frozen[n]) for n, p in model.backbone.named_parameters() if n in frozen)


def test_cli_pretrained_path_and_trainable_count(weights, tmp_path, capsys):
    name, path = weights
    out = tmp_path / "cli"
    args = ["train", "--preset", "embedded", "--algorithm", "fixmatch", "--backbone", name, "--pretrained", str(path),
            "--peft", "vpt_deep", "--out", str(out)] + sum([["--set", s] for s in TINY + ["run.feature_cache=false"]], [])
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "trainable parameters" in printed
    assert json.loads((out / "summary.json").read_text())["pretrained"] == str(path)
    broken = tmp_path / "broken.pt"
    sd = torch.load(path)
    sd.pop(next(k for k in sd if k.startswith("visual.")))
    torch.save(sd, broken)
    args[args.index(str(path))] = str(broken)
    args[args.index(str(out))] = str(tmp_path / "never")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing" in err and err.count("\n") == 1
    assert not (tmp_path / "never").exists()
