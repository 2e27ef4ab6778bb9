"""The fast TSH update computes what the reference maths computes (up to float rounding):
the one-pass monotonicity loss + violation rate, the task-major MFC pass, the dropped padding
columns, the actor step's gradients; and the opt-in candidate sample does what it says."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from shared.tasks import make_tasks
from trainer import losses
from trainer.config import TSHConfig
from trainer.networks import MFCBank
from trainer.replay import Batch, ReplayBuffer
from trainer.tsh import TSHAgent, to_tensor

TASKS = make_tasks(["click", "like", "skip"], [1, 1, -1])
D = 5
SMALL = TSHConfig(hidden=32, batch_size=64, inner_batch_size=16)


def _inputs(
    b: int = 6, n: int = 9, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    preds = torch.rand(b, len(TASKS), n, generator=gen)
    preds[:, 0, :3] = 0.5  # ties form no pair
    mask = torch.rand(b, n, generator=gen) > 0.25
    mask[0] = False  # a request with no real candidate
    q = torch.rand(b, len(TASKS), n, generator=gen)
    return preds, mask, q


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_pass_monotonicity_matches_the_reference(seed: int) -> None:
    preds, mask, q0 = _inputs(seed=seed)
    directions = torch.tensor([1.0, 1.0, -1.0])
    weights = torch.tensor([1.0, 2.0, 3.0])  # distinct per-task upstream gradients
    q_ref, q_new = q0.clone().requires_grad_(), q0.clone().requires_grad_()
    ref = losses.monotonicity_loss(preds, q_ref, directions, mask)
    (ref * weights).sum().backward()
    new, violation = losses.monotonicity_loss_and_violations(preds, q_new, directions, mask)
    (new * weights).sum().backward()
    torch.testing.assert_close(new, ref, rtol=1e-6, atol=1e-7)
    assert q_ref.grad is not None and q_new.grad is not None
    torch.testing.assert_close(q_new.grad, q_ref.grad, rtol=1e-6, atol=1e-8)
    want = losses.violation_rate(preds, q0, directions, mask)
    assert float(violation) == pytest.approx(want, rel=1e-6)
    assert not violation.requires_grad


def test_one_pass_monotonicity_with_no_pairs_is_zero() -> None:
    preds, _, q = _inputs()
    mask = torch.zeros(preds.shape[0], preds.shape[2], dtype=torch.bool)
    loss, violation = losses.monotonicity_loss_and_violations(
        preds, q, torch.ones(len(TASKS)), mask
    )
    assert torch.equal(loss, torch.zeros(len(TASKS))) and float(violation) == 0.0


@pytest.mark.parametrize("monotone", [False, True])
def test_task_major_mfc_pass_matches_forward(monotone: bool) -> None:
    torch.manual_seed(0)
    bank = MFCBank(TASKS, D, hidden=(16, 8), monotone=monotone)
    state = torch.randn(4, D)
    preds = torch.rand(4, len(TASKS), 11)
    ref = bank(state, preds)
    ref.pow(2).sum().backward()
    grads = [p.grad.clone() for p in bank.parameters() if p.grad is not None]
    bank.zero_grad()
    new = bank.forward_task_major(state, preds)
    new.pow(2).sum().backward()
    torch.testing.assert_close(new, ref, rtol=1e-6, atol=1e-6)
    for g, p in zip(grads, bank.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


def _batch(widths: tuple[int, ...], max_candidates: int = 12, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(64, D, len(TASKS), max_candidates, seed=seed)
    for w in widths:
        buf.add(
            rng.normal(size=(8, D)).astype(np.float32),
            rng.uniform(-0.45, 1.5, size=(8, len(TASKS))).astype(np.float32),
            rng.uniform(0, 100, 8).astype(np.float32),
            rng.normal(size=(8, D)).astype(np.float32),
            (rng.random(8) < 0.2).astype(np.float32),
            rng.random((8, len(TASKS), w)).astype(np.float32),
        )
    return buf.sample(64)


def test_inner_stage_drops_only_unused_padding_columns() -> None:
    agent = TSHAgent(TASKS, D, SMALL, seed=0, fit_neutral=False)
    batch = _batch((5, 7))  # 12 slots, at most 7 used
    preds, mask = agent._inner_candidates(batch, 16)
    assert preds.shape == (16, len(TASKS), 7) and mask.shape == (16, 7)
    assert int(mask.sum()) == int(batch.mask[:16].sum())
    np.testing.assert_array_equal(preds.numpy(), batch.predictions[:16, :, :7])
    # the losses over the kept columns equal those over all 12
    s = agent.norm(to_tensor(batch.state[:16]))
    full_p, full_m = to_tensor(batch.predictions[:16]), torch.as_tensor(batch.mask[:16])
    with torch.no_grad():
        ref = losses.monotonicity_loss(full_p, agent.mfc(s, full_p), agent.directions, full_m)
        new, _ = losses.monotonicity_loss_and_violations(
            preds, agent.mfc.forward_task_major(s, preds), agent.directions, mask
        )
    torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-7)


def test_pair_candidates_samples_real_candidates_when_opted_in() -> None:
    assert TSHConfig().pair_candidates == 0  # off by default: it changes what is learned
    with pytest.raises(ValueError):
        TSHConfig(pair_candidates=1)
    agent = TSHAgent(TASKS, D, TSHConfig(pair_candidates=4), seed=0, fit_neutral=False)
    batch = _batch((3, 10))
    preds, mask = agent._inner_candidates(batch, 16)
    assert preds.shape == (16, len(TASKS), 4)
    real = batch.mask[:16].sum(axis=1)
    np.testing.assert_array_equal(mask.sum(dim=1).numpy(), np.minimum(real, 4))
    for row in range(16):  # every kept candidate is one of the request's own
        kept = {tuple(col) for col in preds[row].T.numpy()[mask[row].numpy()]}
        have = {tuple(col) for col in batch.predictions[row].T[batch.mask[row]]}
        assert kept <= have
    agent.update(batch)  # and the update runs on the sample


def test_actor_step_takes_the_full_backward_gradients() -> None:
    agent = TSHAgent(TASKS, D, SMALL, seed=0, fit_neutral=False)
    ref = copy.deepcopy(agent)
    batch = _batch((6,))
    agent.update_actor(batch)
    s = ref.norm(to_tensor(batch.state))
    action = ref.actor(s)
    loss = losses.actor_loss(ref.critic(s, action)) + ref.config.action_l2 * action.pow(2).mean()
    ref.actor_opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ref.actor.parameters(), ref.config.grad_clip)
    ref.actor_opt.step()
    for p, r in zip(agent.actor.parameters(), ref.actor.parameters(), strict=True):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)
    assert all(p.grad is None for p in agent.critic.parameters())  # none computed


def test_update_metrics_are_floats_and_violation_is_reported() -> None:
    agent = TSHAgent(TASKS, D, SMALL, seed=0, fit_neutral=False)
    metrics = agent.update(_batch((6, 9)))
    assert all(isinstance(v, float) for v in metrics.values())
    assert 0.0 <= metrics["mono_violation"] <= 1.0
