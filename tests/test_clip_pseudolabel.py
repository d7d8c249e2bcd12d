"""FPL / IFPL / GRIP (the paper's Table 12): top-K selection by hand, when each re-labels and re-initialises,
the loss over the selected rows, and short embedded runs that resume bit-exact."""
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from finessl_lab import io
from finessl_lab.algorithms import Heads, RoundContext, UnlabeledViews, build_algorithm
from finessl_lab.algorithms.clip_pseudolabel import top_k_per_class
from finessl_lab.config import Config
from finessl_lab.hooks import Hook
from finessl_lab.presets import resolve
from finessl_lab.trainer import Trainer, train
from conftest import crash_at

P = torch.tensor([[0.90, 0.05, 0.05],   # 0: class 0, .90
                  [0.60, 0.30, 0.10],   # 1: class 0, .60
                  [0.80, 0.10, 0.10],   # 2: class 0, .80
                  [0.10, 0.70, 0.20],   # 3: class 1, .70
                  [0.20, 0.20, 0.60],   # 4: class 2, .60
                  [0.10, 0.75, 0.15]])  # 5: class 1, .75


def test_top_k_per_class_by_hand():
    assert top_k_per_class(P, 1).tolist() == [0, -1, -1, -1, 2, 1]
    assert top_k_per_class(P, 2).tolist() == [0, -1, 0, 1, 2, 1]
    assert top_k_per_class(P, 9).tolist() == [0, 0, 0, 1, 2, 1]


def alg(name, **opts):
    c = Config().set("algorithm.name", name)
    for k, v in opts.items():
        c.set(f"algorithm.{name}.{k}", v)
    return build_algorithm(c.validate().algorithm, 3, 6)


class Ctx:
    def __init__(self):
        self.probs, self.predicted, self.resets = P, 0, 0

    def context(self):
        def predict():
            self.predicted += 1
            return self.probs
        return RoundContext(predict, self._reset)

    def _reset(self):
        self.resets += 1


def test_fpl_labels_once_ifpl_every_round_grip_grows_and_resets():
    ctx = Ctx()
    fpl = alg("fpl", per_class=1)
    for epoch in range(3):
        fpl.on_round_start(epoch, ctx.context())
    assert ctx.predicted == 1 and fpl.labels.tolist() == [0, -1, -1, -1, 2, 1] and not fpl.needs_initial_state

    ctx = Ctx()
    ifpl = alg("ifpl", per_class=1, epochs_per_round=2)
    for epoch in range(5):  # rounds start at epochs 0, 2, 4
        ifpl.on_round_start(epoch, ctx.context())
        ctx.probs = P.roll(1, dims=1) if epoch == 1 else P
    assert ctx.predicted == 3 and ctx.resets == 0 and ifpl.round == 2

    ctx = Ctx()
    grip = alg("grip", rounds=3)
    assert grip.needs_initial_state
    sizes = []
    for epoch in range(4):
        grip.on_round_start(epoch, ctx.context())
        sizes.append(int((grip.labels >= 0).sum()))
    # per class: ceil(r+1 * 6 / (3 * 3)) = 1, 2, 2 (then capped at round 3): selected 3, 5, 5, 5
    assert [grip.per_class(r) for r in range(4)] == [1, 2, 2, 2]
    assert sizes == [3, 5, 5, 5] and ctx.resets == 3  # every round but the first


def test_selected_rows_loss_by_hand():
    torch.manual_seed(0)
    main = torch.nn.Linear(4, 3, bias=False)
    h = Heads(main, main)
    a = alg("fpl", per_class=1)
    a.on_round_start(0, Ctx().context())
    g = torch.Generator().manual_seed(1)
    fx, y = torch.randn(2, 4, generator=g), torch.tensor([0, 1])
    u = UnlabeledViews(torch.randn(4, 4, generator=g), [torch.randn(4, 4, generator=g)] * 2)
    idx = torch.tensor([0, 1, 4, 3])  # selected: 0 (label 0) and 4 (label 2)
    out = a.step(h, fx, y, u, idx)
    assert out.mask.tolist() == [1.0, 0.0, 1.0, 0.0]
    ce = F.cross_entropy(main(u.weak[[0, 2]]), torch.tensor([0, 2]))
    assert torch.isclose(out.loss, F.cross_entropy(main(fx), y) + ce)
    assert out.pseudo_label[[0, 2]].tolist() == [0, 2]



TINY = ["data.subsample_per_class=20", "run.epochs=3", "run.steps_per_epoch=4", "run.progress=false",
        "data.num_workers=0", "run.checkpoint_every=3", "optim.mu=2"]


@pytest.mark.parametrize("algorithm", ["fpl", "ifpl", "grip"])
def test_round_methods_run_and_resume_bit_exact(tmp_path, algorithm):
    cfg = resolve("embedded", sets=TINY + [f"algorithm.name={algorithm}", "algorithm.grip.rounds=3",
                                          "algorithm.fpl.per_class=4", "algorithm.ifpl.per_class=4"])
    summary, ref = train(cfg, tmp_path / "ref")
    assert summary["steps"] == 12 and ref["pl_acc_masked"].notna().all()
    state = io.load_checkpoint(tmp_path / "ref" / "checkpoint.pt")["algorithm"]
    selected = int((state["labels"] >= 0).sum())
    n_u = len(state["labels"])
    k = math.ceil(n_u / 10) if algorithm == "grip" else 4  # GRIP's last round: |U| / C per class
    per_class = torch.bincount(state["labels"][state["labels"] >= 0], minlength=10)
    assert per_class.max() == k and (per_class <= k).all() and selected > (100 if algorithm == "grip" else 20)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(cfg, tmp_path / "crashed", hooks=[crash_at(7)]).fit()
    _, metrics = train(cfg, tmp_path / "crashed", resume=True)
    pd.testing.assert_frame_equal(metrics, ref)
    got = io.load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["algorithm"]
    assert torch.equal(got["labels"], state["labels"]) and got["round"] == state["round"]


def test_grip_restarts_from_the_initial_parameters(tmp_path):
    cfg = resolve("embedded", sets=TINY + ["algorithm.name=grip", "algorithm.grip.rounds=3", "run.epochs=2"])
    t = Trainer(cfg, None)
    start = {k: v.clone() for k, v in t.exp.model.trainable_state_dict().items()}
    seen = {}

    class Spy(Hook):
        name = "spy"

        def on_step(self, record):
            if record.step == 4:  # first step of round 1, right after the reset: one SGD step from the start
                seen.update(t.exp.model.trainable_state_dict())
    t.hooks.append(Spy())
    t.fit()
    t2 = Trainer(resolve("embedded", sets=TINY + ["algorithm.name=grip", "algorithm.grip.rounds=3",
                                                 "algorithm.grip.reinit_each_round=false", "run.epochs=2"]), None)
    t2.fit()
    w = "main.weight"
    d_reset = (seen[w] - start[w]).norm()
    d_keep = (t2.exp.model.trainable_state_dict()[w] - start[w]).norm()
    assert d_reset < 0.5 * d_keep and math.isfinite(float(d_reset))
