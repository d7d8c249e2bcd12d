"""Workers + intra-op threads are sized to the cores (data.num_workers is an upper bound), evaluation loaders keep
their workers, and none of that changes a batch: batches are a pure function of (seed, step)."""
import dataclasses

import open_clip
import pytest
import torch

import finessl_lab.data.loading as loading
from finessl_lab.build import build_experiment
from finessl_lab.data.loading import available_cores, worker_plan
from finessl_lab.presets import resolve

from test_image_mode import TINY


@pytest.mark.parametrize("requested, cores, expected", [
    (2, 2, (1, 1)), (2, 1, (0, 1)), (0, 2, (0, 2)), (2, 8, (2, 6)), (8, 4, (3, 1)), (1, 16, (1, 15))])
def test_worker_plan_never_exceeds_the_cores(requested, cores, expected):
    plan = worker_plan(requested, cores)
    assert tuple(plan) == expected
    assert plan.workers <= requested and plan.workers + plan.threads == cores and plan.threads >= 1


def test_available_cores_is_positive():
    assert 1 <= available_cores() <= (torch.multiprocessing.cpu_count() or 1)


def _batches(exp, n):
    return [dataclasses.asdict(b) for b in exp.batches(0, n)]


def test_worker_plan_changes_no_batch(tiny_clip_configs, tmp_path, monkeypatch):
    torch.manual_seed(0)
    name = tiny_clip_configs[0]
    path = tmp_path / "tiny_vit.pt"
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), path)
    sets = [s for s in TINY if not s.startswith("data.num_workers")] + [
        f"model.backbone={name}", f"model.pretrained={path}", "run.feature_cache=false", "algorithm.name=finessl"]
    serial = build_experiment(resolve("embedded", sets=sets + ["data.num_workers=0"]))
    assert serial.intra_op_threads is None
    monkeypatch.setattr(loading, "available_cores", lambda: 3)
    parallel = build_experiment(resolve("embedded", sets=sets + ["data.num_workers=4"]))
    assert parallel.intra_op_threads == 1  # 2 workers + 1 thread on 3 cores
    loader = parallel.eval_sets["test"].inputs
    assert loader.num_workers == 2 and loader.persistent_workers
    for a, b in zip(_batches(serial, 3), _batches(parallel, 3), strict=True):
        for k in a:
            assert (a[k] is None and b[k] is None) or torch.equal(a[k], b[k]), k
    for _ in range(2):  # persistent workers: the second epoch reuses them and yields the same images
        got = torch.cat(list(loader))
        assert torch.equal(got, torch.cat(list(serial.eval_sets["test"].inputs)))
