
import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never write splits/features into the user's ~/.cache: one cache per test session."""
    root = tmp_path_factory.getbasetemp() / "finessl_cache"
    monkeypatch.setenv("FINESSL_LAB_CACHE", str(root))
    yield


TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1}
TINY_VIT = "finessl-test-tiny-vit"
TINY_RN = "finessl-test-tiny-rn"


@pytest.fixture(scope="session")
def tiny_clip_configs(tmp_path_factory):
    """Register tiny, randomly initialised open_clip ViT / ResNet configs: test fixtures, never 'pretrained'."""
    import json

    import open_clip

    root = tmp_path_factory.mktemp("open_clip_cfg")
    vit = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8}, "text_cfg": TEXT_CFG}
    rn = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
          "text_cfg": TEXT_CFG}
    for name, cfg in ((TINY_VIT, vit), (TINY_RN, rn)):
        (root / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(root / f"{name}.json")
    return TINY_VIT, TINY_RN


def crash_at(step: int):
    """A hook that raises at training step ``step`` (a simulated crash, for resume tests)."""
    from finessl_lab.hooks import Hook

    class Crash(Hook):
        name = "crash"

        def on_step(self, record):
            if record.step == step:
                raise RuntimeError("simulated crash")

    return Crash()


def head_batch(seed=1, u=6):
    """A tiny head-level batch: labeled features [4, 4], targets, unlabeled weak + 2 strong views [u, 4], indices."""
    import torch

    from finessl_lab.algorithms import UnlabeledViews

    g = torch.Generator().manual_seed(seed)
    fx = torch.randn(4, 4, generator=g)
    y = torch.tensor([0, 1, 2, 0])
    views = UnlabeledViews(torch.randn(u, 4, generator=g), [torch.randn(u, 4, generator=g), torch.randn(u, 4, generator=g)])
    return fx, y, views, torch.arange(u)
