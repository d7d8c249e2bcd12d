"""ULFine (our interpretation, see algorithms/ulfine.py): each component on tiny tensors, then a short embedded
run that resumes bit-exact."""
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from finessl_lab import io
from finessl_lab.algorithms import Heads, UnlabeledViews, build_algorithm
from finessl_lab.algorithms.ulfine import fuse, orthogonality_loss
from finessl_lab.config import Config
from finessl_lab.models.heads import CosineHead
from finessl_lab.presets import resolve
from finessl_lab.trainer import Trainer, train
from conftest import crash_at


def alg(**opts):
    c = Config().set("algorithm.name", "ulfine")
    for k, v in opts.items():
        c.set(f"algorithm.ulfine.{k}", v)
    return build_algorithm(c.validate().algorithm, 2, 4)


def test_orthogonality_loss_by_hand():
    assert orthogonality_loss(torch.eye(3) * 5) == 0
    # two unit rows at 60 degrees: off-diagonal cos = .5 twice -> (.25 + .25) / 4
    c = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert torch.isclose(orthogonality_loss(c), torch.tensor(0.125))


def test_fusion_forms_by_hand():
    t, l = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert torch.equal(fuse(t, l, "sum", 0.5), torch.tensor([[1.0, 1.0]]))
    prior = torch.log(torch.tensor([0.75, 0.25]))
    assert torch.allclose(fuse(t, l, "logit_adjust", 1.0, prior), torch.tensor([[1 - math.log(0.75), 2 - math.log(0.25)]]))
    avg = (torch.softmax(t, 1) + torch.softmax(l, 1)) / 2
    assert torch.allclose(fuse(t, l, "prob_avg", 1.0), avg.log())


def heads():
    torch.manual_seed(0)
    main, lp = CosineHead(2, 2, scale=1.0), CosineHead(2, 2, scale=1.0)
    main.init_weight(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    lp.init_weight(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
    return Heads(main, lp)


def test_visual_prototypes_paf_and_loss_by_hand():
    h = heads()
    a = alg(proto_decay=0.5, paf_mu=0.5, paf_stat_decay=0.5, threshold=0.0, orth_weight=2.0)
    fx = torch.tensor([[3.0, 4.0], [0.0, 2.0], [0.0, 5.0]])
    y = torch.tensor([0, 1, 1])
    u = UnlabeledViews(torch.tensor([[1.0, 0.2], [0.1, 1.0]]), [torch.tensor([[1.0, 0.0], [1.0, 1.0]])] * 2)
    out = a.step(h, fx, y, u, torch.arange(2))
    # c_v: first sight sets it: class 0 = (.6, .8), class 1 = (0, 1)
    assert torch.allclose(a.visual, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    fused = h.main(u.weak) + h.aux(u.weak)
    q = torch.softmax(fused, 1)
    assert torch.allclose(a.stat, 0.25 + 0.5 * q.mean(0))
    pl = q.argmax(1)
    s = u.strong[0]
    lu = F.cross_entropy(h.main(s), pl) + F.cross_entropy(h.aux(s), pl)
    lx = F.cross_entropy(h.main(fx), y) + F.cross_entropy(h.aux(fx), y)
    assert torch.isclose(out.loss, lx + 2.0 * orthogonality_loss(h.main.weight) + lu)
    # PAF runs at the start of the next step: a = .5 * P / max P; rows renormalised to their old norm (1)
    stat = a.stat.clone()
    ak = 0.5 * stat / stat.max()
    w0 = h.main.weight.detach().clone()
    a._paf(h)
    expect = F.normalize((1 - ak[:, None]) * w0 + ak[:, None] * torch.tensor([[0.6, 0.8], [0.0, 1.0]]), dim=1)
    assert torch.allclose(h.main.weight, expect)
    # second labeled batch: EMA 0.5 on the present class only
    a._update_visual(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert torch.allclose(a.visual, torch.tensor([[0.8, 0.4], [0.0, 1.0]]))


def test_eval_logits_follow_predict_with():
    h, f = heads(), torch.tensor([[1.0, 2.0]])
    assert torch.equal(alg(predict_with="text").eval_logits(h, f), h.main(f))
    assert torch.equal(alg(predict_with="lp").eval_logits(h, f), h.aux(f))
    assert torch.allclose(alg().eval_logits(h, f), h.main(f) + h.aux(f))



def test_ulfine_runs_and_resumes_bit_exact(tmp_path):
    cfg = resolve("embedded", sets=["data.subsample_per_class=20", "run.epochs=2", "run.steps_per_epoch=5",
                                    "run.progress=false", "data.num_workers=0", "run.checkpoint_every=3",
                                    "optim.mu=2", "algorithm.name=ulfine", "algorithm.ulfine.threshold=0.7"])
    summary, ref = train(cfg, tmp_path / "ref")
    assert summary["steps"] == 10 and ref["loss_orth"].notna().all() and 10 < summary["test_top1"] <= 100
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(cfg, tmp_path / "crashed", hooks=[crash_at(7)]).fit()
    _, metrics = train(cfg, tmp_path / "crashed", resume=True)
    pd.testing.assert_frame_equal(metrics, ref)
    a = io.load_checkpoint(tmp_path / "ref" / "checkpoint.pt")
    b = io.load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")
    assert all(torch.equal(a["algorithm"][k], b["algorithm"][k]) for k in a["algorithm"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
