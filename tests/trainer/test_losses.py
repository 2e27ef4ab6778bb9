"""The TSH losses (paper eqs. 11, 13-18) on tiny hand-computable inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer import losses


def _t(x: object) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def _nlsig(d: float) -> float:
    """-log sigmoid(d)."""
    return math.log1p(math.exp(-d))


# ----------------------------------------------------------------------------- outer stage


def test_outer_stage_is_q_times_one_plus_a_q() -> None:
    q = _t([[[0.2, 0.5], [0.1, 0.8]]])  # (B=1, K=2, N=2)
    a = _t([[0.5, -0.4]])  # (B=1, K=2)
    got = losses.outer_stage(q, a)
    want = _t([[[0.2 * 1.1, 0.5 * 1.25], [0.1 * 0.96, 0.8 * 0.68]]])
    assert got.shape == (1, 2, 2)
    torch.testing.assert_close(got, want)


def test_outer_stage_with_zero_action_is_identity() -> None:
    q = torch.rand(3, 4, 7)
    torch.testing.assert_close(losses.outer_stage(q, torch.zeros(3, 4)), q)


def test_outer_stage_action_is_per_request() -> None:
    q = torch.full((2, 1, 3), 0.5)
    out = losses.outer_stage(q, _t([[1.0], [-0.2]]))
    torch.testing.assert_close(out[0], torch.full((1, 3), 0.75))
    torch.testing.assert_close(out[1], torch.full((1, 3), 0.45))


def test_fused_score_sums_over_tasks() -> None:
    q = _t([[[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]], [[0.0, 0.0, 1.0], [0.5, 0.5, 0.5]]])
    got = losses.fused_score(q)
    torch.testing.assert_close(got, _t([[1.1, 2.2, 3.3], [0.5, 0.5, 1.5]]))


# ----------------------------------------------------------------------------- critic / actor


def test_td_target_masks_bootstrap_on_done() -> None:
    got = losses.td_target(_t([1.0, 2.0]), _t([0.0, 1.0]), _t([10.0, 10.0]), gamma=0.9)
    torch.testing.assert_close(got, _t([1.0 + 9.0, 2.0]))


def test_td_target_gamma_zero_is_reward() -> None:
    got = losses.td_target(_t([3.0, -1.0]), _t([0.0, 0.0]), _t([5.0, 7.0]), gamma=0.0)
    torch.testing.assert_close(got, _t([3.0, -1.0]))


def test_critic_loss_is_mse_and_target_is_constant() -> None:
    q = _t([1.0, 2.0]).requires_grad_()
    target = _t([0.0, 4.0]).requires_grad_()
    loss = losses.critic_loss(q, target)
    assert float(loss.detach()) == pytest.approx((1.0 + 4.0) / 2)
    loss.backward()
    assert target.grad is None
    torch.testing.assert_close(q.grad, _t([1.0, -2.0]))  # d/dq mean((q-t)^2) = (q-t)


def test_actor_loss_is_minus_mean_q() -> None:
    q = _t([1.0, 2.0, 6.0]).requires_grad_()
    loss = losses.actor_loss(q)
    assert float(loss.detach()) == pytest.approx(-3.0)
    loss.backward()
    torch.testing.assert_close(q.grad, torch.full((3,), -1.0 / 3))


# ----------------------------------------------------------------------------- transfer (eq. 16)


def test_transfer_loss_hand_computed_three_candidates() -> None:
    z_outer = _t([[1.0, 2.0, 3.0]])
    z_inner = _t([[0.1, 0.5, 0.2]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    # pairs (i, j) with z_i < z_j: (0, 1), (0, 2), (1, 2); loss -log sigma(zI_j - zI_i)
    want = (_nlsig(0.5 - 0.1) + _nlsig(0.2 - 0.1) + _nlsig(0.2 - 0.5)) / 3
    got = losses.transfer_loss(z_outer, z_inner, mask)
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_transfer_loss_label_is_outer_order_not_input_order() -> None:
    z_outer = _t([[3.0, 1.0]])  # candidate 1 ranks below candidate 0
    z_inner = _t([[0.9, 0.2]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    want = _nlsig(0.9 - 0.2)  # the only pair (i=1, j=0)
    assert float(losses.transfer_loss(z_outer, z_inner, mask)) == pytest.approx(want, rel=1e-6)


def test_transfer_loss_ties_in_outer_score_contribute_nothing() -> None:
    mask = torch.ones(1, 3, dtype=torch.bool)
    all_tied = losses.transfer_loss(_t([[1.0, 1.0, 1.0]]), _t([[0.3, -2.0, 5.0]]), mask)
    assert float(all_tied) == 0.0
    # z = [1, 1, 2]: only (0, 2) and (1, 2) count, not the tied (0, 1)
    got = losses.transfer_loss(_t([[1.0, 1.0, 2.0]]), _t([[0.3, -2.0, 0.5]]), mask)
    want = (_nlsig(0.5 - 0.3) + _nlsig(0.5 + 2.0)) / 2
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_transfer_loss_ignores_masked_candidates() -> None:
    z_outer = _t([[1.0, 2.0, 3.0]])
    z_inner = _t([[0.1, 0.5, -50.0]])  # the padded candidate would dominate if it counted
    mask = torch.tensor([[True, True, False]])
    want = _nlsig(0.5 - 0.1)
    assert float(losses.transfer_loss(z_outer, z_inner, mask)) == pytest.approx(want, rel=1e-6)


def test_transfer_loss_pairs_stay_within_a_request() -> None:
    z_outer = _t([[1.0, 2.0], [5.0, 0.0]])
    z_inner = _t([[0.0, 1.0], [0.0, 3.0]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    # request 0: pair (0, 1) -> -log s(1); request 1: pair (1, 0) -> -log s(0 - 3)
    want = (_nlsig(1.0) + _nlsig(-3.0)) / 2
    assert float(losses.transfer_loss(z_outer, z_inner, mask)) == pytest.approx(want, rel=1e-6)


def test_transfer_loss_agreeing_order_is_cheaper_than_reversed() -> None:
    z_outer = _t([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    agree = losses.transfer_loss(z_outer, _t([[0.0, 1.0, 2.0, 3.0]]), mask)
    reverse = losses.transfer_loss(z_outer, _t([[3.0, 2.0, 1.0, 0.0]]), mask)
    assert float(agree) < math.log(2.0) < float(reverse)


def test_transfer_loss_gradient_flows_to_inner_only() -> None:
    z_outer = _t([[0.0, 1.0]]).requires_grad_()
    z_inner = _t([[0.3, -0.4]]).requires_grad_()
    loss = losses.transfer_loss(z_outer, z_inner, torch.ones(1, 2, dtype=torch.bool))
    loss.backward()
    assert z_outer.grad is None
    assert z_inner.grad is not None
    # loss = -log sigma(b - a): d/db = -sigma(a - b), d/da = +sigma(a - b)
    s = 1.0 / (1.0 + math.exp(-(0.3 + 0.4)))
    torch.testing.assert_close(z_inner.grad, _t([[s, -s]]))


# ------------------------------------------------------------------------ monotonicity (eq. 17)


def _mono(preds: list[float], q: list[float], direction: float, mask: list[bool] | None = None):
    p = _t([[preds]])  # (1, 1, N)
    mask_t = torch.tensor([mask if mask is not None else [True] * len(preds)])
    return losses.monotonicity_loss(p, _t([[q]]), _t([direction]), mask_t)


def test_monotonicity_loss_zero_for_increasing_cell() -> None:
    got = _mono([0.1, 0.2, 0.3], [0.2, 0.4, 0.6], 1.0)
    assert got.shape == (1,)
    assert float(got[0]) == 0.0


def test_monotonicity_loss_hand_computed_for_decreasing_cell() -> None:
    got = _mono([0.1, 0.2, 0.3], [0.6, 0.4, 0.2], 1.0)
    # pairs (0,1): 0.2, (0,2): 0.4, (1,2): 0.2 -> sum 0.8 over 3 pairs
    assert float(got[0]) == pytest.approx(0.8 / 3, rel=1e-6)


def test_monotonicity_loss_input_order_does_not_matter() -> None:
    got = _mono([0.3, 0.1, 0.2], [0.2, 0.6, 0.4], 1.0)  # a permutation of the case above
    assert float(got[0]) == pytest.approx(0.8 / 3, rel=1e-6)


def test_monotonicity_loss_direction_minus_one_flips_it() -> None:
    assert float(_mono([0.1, 0.2, 0.3], [0.6, 0.4, 0.2], -1.0)[0]) == 0.0
    got = _mono([0.1, 0.2, 0.3], [0.2, 0.4, 0.6], -1.0)
    assert float(got[0]) == pytest.approx(0.8 / 3, rel=1e-6)


def test_monotonicity_loss_ignores_masked_candidates() -> None:
    got = _mono([0.1, 0.2, 0.3], [0.2, 0.4, 0.0], 1.0, mask=[True, True, False])
    assert float(got[0]) == 0.0
    got = _mono([0.1, 0.2, 0.3], [0.5, 0.4, 0.0], 1.0, mask=[True, True, False])
    assert float(got[0]) == pytest.approx(0.1, rel=1e-5)


def test_monotonicity_loss_equal_inputs_form_no_pair() -> None:
    assert float(_mono([0.5, 0.5], [0.9, 0.1], 1.0)[0]) == 0.0
    # [0.5, 0.5, 0.7]: pairs (0,2), (1,2) only: relu(0.9-0.3)=0.6, relu(0.1-0.3)=0 -> 0.3
    got = _mono([0.5, 0.5, 0.7], [0.9, 0.1, 0.3], 1.0)
    assert float(got[0]) == pytest.approx(0.3, rel=1e-5)


def test_monotonicity_loss_is_per_task() -> None:
    preds = _t([[[0.1, 0.2], [0.1, 0.2]]])  # (1, K=2, 2)
    q = _t([[[0.6, 0.4], [0.6, 0.4]]])  # both decreasing
    got = losses.monotonicity_loss(preds, q, _t([1.0, -1.0]), torch.ones(1, 2, dtype=torch.bool))
    assert got.shape == (2,)
    assert float(got[0]) == pytest.approx(0.2, rel=1e-5)  # violates +1
    assert float(got[1]) == 0.0  # fine for -1


def test_monotonicity_loss_gradient_pushes_towards_monotone() -> None:
    q = _t([[[0.6, 0.4]]]).requires_grad_()
    loss = losses.monotonicity_loss(
        _t([[[0.1, 0.2]]]), q, _t([1.0]), torch.ones(1, 2, dtype=torch.bool)
    ).sum()
    loss.backward()
    torch.testing.assert_close(q.grad, _t([[[1.0, -1.0]]]))


# ----------------------------------------------------------------------------- eq. 18


@pytest.mark.parametrize(("lam", "want"), [(0.4, 0.4 * 0.4 + 0.6 * 2.0), (0.0, 2.0), (1.0, 0.4)])
def test_inner_loss_mixes_mono_sum_and_transfer(lam: float, want: float) -> None:
    got = losses.inner_loss(_t([0.1, 0.3]), _t(2.0), lam)
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_soft_transfer_loss_is_zero_when_the_inner_scores_copy_the_outer_differences() -> None:
    z_outer = torch.tensor([[0.0, 1.0, 3.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    shifted = z_outer + 5.0  # same differences: the optimum of the soft label
    assert float(losses.soft_transfer_loss(z_outer, shifted, mask)) == pytest.approx(0.0, abs=1e-6)
    # the hard BPR label of eq. 16 is not at its optimum there: it wants unbounded margins
    assert float(losses.transfer_loss(z_outer, shifted, mask)) > 0.05
    stretched = z_outer * 10.0  # same order, ten times the margins
    assert float(losses.soft_transfer_loss(z_outer, stretched, mask)) > 0.1
    assert float(losses.soft_transfer_loss(z_outer, -z_outer, mask)) > 0.5  # order reversed


# ------------------------------------------------------------- fixed point at a = 0 (learner)
def test_soft_and_distill_transfer_have_zero_gradient_at_a_zero() -> None:
    """With the outer stage the identity (a = 0) the label is the inner stage itself: neither
    default transfer moves the cells (eq. 16's hard label does: it widens every margin)."""
    torch.manual_seed(0)
    q_inner = torch.rand(4, 3, 5, requires_grad=True)
    mask = torch.ones(4, 5, dtype=torch.bool)
    q_outer = losses.outer_stage(q_inner, torch.zeros(4, 3))
    z_outer, z_inner = losses.fused_score(q_outer), losses.fused_score(q_inner)
    for loss in (
        losses.soft_transfer_loss(z_outer, z_inner, mask),
        losses.distill_loss(q_outer, q_inner, mask),
    ):
        (grad,) = torch.autograd.grad(loss, q_inner)
        assert float(loss) == pytest.approx(0.0, abs=1e-6)
        assert float(grad.abs().max()) < 1e-6
    hard = losses.transfer_loss(z_outer, z_inner, mask)
    (grad,) = torch.autograd.grad(hard, q_inner)
    assert float(grad.abs().max()) > 1e-3


def test_distill_loss_hand_computed() -> None:
    """One request, K = 1, two real candidates and one padded: mean of (q^I - q)^2 over the
    real ones, and its gradient 2 (q^I - q) / n."""
    q_inner = torch.tensor([[[0.5, 0.2, 0.9]]], requires_grad=True)
    action = torch.tensor([[1.0]])
    mask = torch.tensor([[True, True, False]])
    q_outer = losses.outer_stage(q_inner, action)  # [0.75, 0.24, (1.71)]
    loss = losses.distill_loss(q_outer, q_inner, mask)
    want = ((0.5 - 0.75) ** 2 + (0.2 - 0.24) ** 2) / 2
    assert float(loss) == pytest.approx(want, rel=1e-5)
    (grad,) = torch.autograd.grad(loss, q_inner)
    np.testing.assert_allclose(grad[0, 0].numpy(), [-0.25, -0.04, 0.0], rtol=1e-4, atol=1e-7)
