"""BMS and DLS numerics against hand-computed tensors, in both the code and the paper form."""
import pytest
import torch

from finessl_lab.algorithms.bms import LearningPace, apply_margins, balanced_margins, normalised_pace
from finessl_lab.algorithms.dls import smoothed_targets, soft_cross_entropy
from finessl_lab.errors import UserError

BETA = torch.tensor([1.0, 0.5, 0.0])


def test_balanced_margins_code_form():
    # alpha_t = (1 - 0) * 8 = 8 ; m = 8 (1-b)/(1+b) = [0, 8*0.5/1.5, 8]
    m = balanced_margins(BETA, 8.0, form="code")
    assert torch.allclose(m, torch.tensor([0.0, 8 / 3, 8.0]))


def test_balanced_margins_paper_form():
    m = balanced_margins(BETA, 8.0, form="paper")  # 8 (1-b)
    assert torch.allclose(m, torch.tensor([0.0, 4.0, 8.0]))


def test_dynamic_alpha_scales_with_disparity():
    beta = torch.tensor([1.0, 0.8, 0.6])  # alpha_t = 0.4 * 2 = 0.8
    assert torch.allclose(balanced_margins(beta, 2.0, "paper"), torch.tensor([0.0, 0.8 * 0.2, 0.8 * 0.4]))
    assert torch.allclose(balanced_margins(torch.ones(4), 8.0), torch.zeros(4))  # balanced pace: no margin


def test_balanced_margins_rejects_unknown_form():
    with pytest.raises(UserError, match="paper"):
        balanced_margins(BETA, 8.0, form="papr")


def test_apply_margins_adds_to_non_target_logits_only():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.5, -1.0, 2.0]])
    targets = torch.tensor([0, 2, 1])
    margins = torch.tensor([0.0, 8 / 3, 8.0])
    out = apply_margins(logits, targets, margins)
    expected = torch.tensor([[1.0, 2.0, 3.0], [8.0, 8.0, 0.0], [0.5 + 8 / 3, -1.0, 2.0 + 8 / 3]])
    assert torch.allclose(out, expected)
    assert torch.equal(logits, torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.5, -1.0, 2.0]]))  # not in place


def test_margin_raises_the_loss_of_a_slow_class():
    logits = torch.tensor([[2.0, 0.0]])
    plain = torch.nn.functional.cross_entropy(logits, torch.tensor([0]))
    margined = torch.nn.functional.cross_entropy(apply_margins(logits, torch.tensor([0]), torch.tensor([1.0, 0.0])),
                                                 torch.tensor([0]))
    # CE with margin = log(1 + e^{0 + 1 - 2}) = log(1 + e^-1)
    assert torch.isclose(margined, torch.log1p(torch.exp(torch.tensor(-1.0))))
    assert margined > plain


def test_smoothed_targets_code_form():
    t = smoothed_targets(torch.tensor([0, 2]), 3, 0.5, form="code")  # 1-s on label, s/(C-1) elsewhere
    assert torch.allclose(t, torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]]))


def test_smoothed_targets_paper_form():
    t = smoothed_targets(torch.tensor([1]), 4, 0.4, form="paper")  # (1-s)+s/C on label, s/C elsewhere
    assert torch.allclose(t, torch.tensor([[0.1, 0.7, 0.1, 0.1]]))
    assert torch.allclose(t.sum(1), torch.ones(1))


def test_smoothed_targets_range_errors():
    with pytest.raises(UserError, match="smoothing=1.5"):
        smoothed_targets(torch.tensor([0]), 3, 1.5)


def test_soft_cross_entropy_matches_hard_ce_for_one_hot():
    logits = torch.tensor([[0.3, -0.2, 1.0]])
    hard = torch.nn.functional.cross_entropy(logits, torch.tensor([2]))
    assert torch.isclose(soft_cross_entropy(logits, torch.tensor([[0.0, 0.0, 1.0]]))[0], hard)


def test_normalised_pace_zero_until_selected():
    assert torch.equal(normalised_pace(torch.zeros(3, dtype=torch.long)), torch.zeros(3))
    assert torch.allclose(normalised_pace(torch.tensor([4, 2, 0])), torch.tensor([1.0, 0.5, 0.0]))


def _recount(slots, c):
    return torch.bincount(slots[slots >= 0], minlength=c)


def test_learning_pace_incremental_counts_match_a_full_recount():
    g = torch.Generator().manual_seed(0)
    pace = LearningPace(num_unlabeled=50, num_classes=4, zeta=0.7)
    for _ in range(40):
        idx = torch.randint(0, 50, (16,), generator=g)  # duplicates inside a batch included
        probs = torch.softmax(3 * torch.randn(16, 4, generator=g), dim=1)
        pace.update(idx, probs)
        assert torch.equal(pace.counts, _recount(pace.slots, 4))


def test_learning_pace_latest_prediction_wins_and_unconfident_clears():
    pace = LearningPace(3, 2, zeta=0.7, write="all")  # finessl_lab's earlier form; official: test_fidelity.py
    pace.update(torch.tensor([0, 1]), torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
    assert pace.counts.tolist() == [1, 1]
    pace.update(torch.tensor([0]), torch.tensor([[0.6, 0.4]]))  # below zeta: slot cleared
    assert pace.slots.tolist() == [-1, 1, -1] and pace.counts.tolist() == [0, 1]
    pace.update(torch.tensor([2, 2]), torch.tensor([[0.9, 0.1], [0.1, 0.9]]))  # last occurrence wins
    assert pace.slots.tolist() == [-1, 1, 1] and pace.counts.tolist() == [0, 2]
    assert torch.allclose(pace.beta(), torch.tensor([0.0, 1.0]))
    state = pace.state_dict()
    pace.reset()
    assert pace.counts.sum() == 0
    pace.load_state_dict(state)
    assert pace.counts.tolist() == [0, 2]
