"""The feature-cache extraction path (issue 13, target 4): batch 64 / channels_last / inference_mode on CPU give the
same features as a plain NCHW no_grad forward (to fp16 rounding), and the plan and the cache key are as documented."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from finessl_lab.data.features import (CPU_EXTRACT_BATCH, STORED_DTYPE, cache_key, extract, extraction_plan)
from finessl_lab.models.backbones import ScratchCNN


def _images(n: int = 70):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(n)]


def _to_tensor(img):
    return torch.as_tensor(np.array(img), dtype=torch.float32).permute(2, 0, 1) / 255.0


def test_extraction_matches_a_plain_nchw_forward_and_leaves_the_backbone_as_built():
    images, net = _images(), ScratchCNN()
    with torch.no_grad():
        ref = net(torch.stack([_to_tensor(i) for i in images]))  # one NCHW batch of 70, fp32
    out = extract(net, images, _to_tensor, stream=None, seed=0, device="cpu", batch_size=256, num_workers=0,
                  desc="t", progress=False)
    assert out.dtype == STORED_DTYPE and out.shape == ref.shape and not out.is_inference()
    # stored in fp16: equal to the fp32 reference rounded to fp16, up to one fp16 ulp from fp32 summation order
    assert torch.allclose(out.float(), ref, rtol=2e-3, atol=1e-4)
    conv = net.net[0][0].weight
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)
    out.add_(1)  # a normal tensor: callers may modify it


def test_extraction_plan_caps_cpu_batch_and_workers_only():
    assert extraction_plan("cpu", 256, 2) == (CPU_EXTRACT_BATCH, 1)
    assert extraction_plan("cpu", 16, 0) == (16, 0)
    assert extraction_plan("cuda", 256, 4) == (256, 4)


def test_precision_enters_the_cache_key_only_when_reduced():
    args = ("bb", "ds", {"t": 1}, 2, 0)
    assert cache_key(*args) == cache_key(*args, precision="fp32")
    assert cache_key(*args, precision="bf16") != cache_key(*args) != cache_key(*args, precision="fp16")


@pytest.mark.parametrize("precision", ["bf16", "fp16_pure"])
def test_reduced_precision_is_refused_on_cpu(precision):
    from finessl_lab.errors import UserError

    with pytest.raises(UserError, match="run.precision"):
        extract(ScratchCNN(), _images(2), _to_tensor, stream=None, seed=0, device="cpu", batch_size=2,
                num_workers=0, desc="t", progress=False, precision=precision)


def test_compute_through_one_loader_equals_extracting_view_by_view():
    from types import SimpleNamespace

    from finessl_lab.data.features import STRONG_STREAM, WEAK_STREAM, compute

    images, net = _images(50), ScratchCNN()
    noisy = lambda img: _to_tensor(img) + 0.1 * torch.rand(3, 16, 16)  # noqa: E731  (a random view, seeded per image)
    bundle = SimpleNamespace(train=SimpleNamespace(images=images), test=SimpleNamespace(images=images[:20]))
    transforms = SimpleNamespace(test=_to_tensor, weak=noisy, strong=noisy)
    feats = compute(net, bundle, transforms, views=2, seed=3, device="cpu", batch_size=64, num_workers=0,
                    progress=False)
    kw = dict(seed=3, device="cpu", batch_size=64, num_workers=0, desc="t", progress=False)
    ref = {"train_clean": extract(net, images, _to_tensor, stream=None, **kw),
           "test": extract(net, images[:20], _to_tensor, stream=None, **kw),
           "weak": torch.stack([extract(net, images, noisy, stream=WEAK_STREAM + k, **kw) for k in range(2)]),
           "strong": torch.stack([extract(net, images, noisy, stream=STRONG_STREAM + k, **kw) for k in range(2)])}
    assert {k: tuple(v.shape) for k, v in feats.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    for k in ref:
        assert torch.allclose(feats[k].float(), ref[k].float(), rtol=2e-3, atol=1e-4), k
    assert not torch.allclose(feats["weak"][0].float(), feats["weak"][1].float())  # the K views differ
