"""The xMTF networks: the MFC bank (paper eqs. 6/9), the observation normaliser, actor, critic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.tasks import TaskSpec, make_tasks
from trainer.networks import Actor, Critic, MFCBank, RunningNorm

TASKS = make_tasks(["click", "like", "skip"], [1, 1, -1])
D = 6


def _bank(monotone: bool = False, seed: int = 0, tasks=TASKS) -> MFCBank:
    torch.manual_seed(seed)
    return MFCBank(tasks, D, hidden=(16, 8), monotone=monotone).eval()


def _randomise(bank: MFCBank, seed: int, std: float = 1.5) -> None:
    """Arbitrary (also negative raw) weights everywhere, as training might leave them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bank.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


@pytest.mark.parametrize("monotone", [False, True])
def test_mfc_bank_shape_and_range(monotone: bool) -> None:
    bank = _bank(monotone)
    _randomise(bank, 1)
    b, n = 4, 11
    with torch.no_grad():
        out = bank(torch.randn(b, D) * 3, torch.rand(b, 3, n) * 4 - 2)
    assert out.shape == (b, 3, n)
    assert torch.all(out > 0) and torch.all(out < 1)


def test_mfc_bank_candidate_output_does_not_depend_on_other_candidates() -> None:
    bank = _bank()
    _randomise(bank, 2)
    state = torch.randn(2, D)
    preds = torch.rand(2, 3, 9)
    with torch.no_grad():
        full = bank(state, preds)
        for j in range(9):
            alone = bank(state, preds[:, :, j : j + 1])
            torch.testing.assert_close(alone[:, :, 0], full[:, :, j], rtol=1e-6, atol=1e-6)
        perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(bank(state, preds[:, :, perm]), full[:, :, perm])


def test_mfc_bank_state_is_per_request() -> None:
    bank = _bank()
    _randomise(bank, 3)
    state = torch.randn(3, D)
    preds = torch.rand(1, 3, 5).expand(3, 3, 5).contiguous()  # same candidates for every request
    with torch.no_grad():
        batched = bank(state, preds)
        for b in range(3):
            single = bank(state[b : b + 1], preds[b : b + 1])
            torch.testing.assert_close(single[0], batched[b], rtol=1e-6, atol=1e-6)
    # the state personalises the cells: different requests, different outputs
    assert not torch.allclose(batched[0], batched[1])


def test_mfc_cell_k_depends_only_on_prediction_k() -> None:
    bank = _bank()
    _randomise(bank, 4)
    state = torch.randn(1, D)
    preds = torch.rand(1, 3, 6)
    changed = preds.clone()
    changed[:, 1] = torch.rand(1, 6)
    with torch.no_grad():
        a, b = bank(state, preds), bank(state, changed)
    torch.testing.assert_close(a[:, [0, 2]], b[:, [0, 2]])
    assert not torch.allclose(a[:, 1], b[:, 1])


def test_mfc_normalise_direction_offset_scale() -> None:
    tasks = (
        TaskSpec("watch", 1, offset=2.0, scale=4.0, low=0.0, high=10.0),
        TaskSpec("skip", -1, offset=0.5, scale=0.25),
    )
    bank = _bank(tasks=tasks)
    preds = torch.tensor([[[6.0, 2.0, 0.0], [1.0, 0.5, 0.25]]])
    want = torch.tensor([[[1.0, 0.0, -0.5], [-2.0, 0.0, 1.0]]])
    torch.testing.assert_close(bank.normalise(preds), want)


def test_mfc_forward_sees_only_the_normalised_input() -> None:
    """A bank with offset/scale/direction equals a plain bank fed the normalised input."""
    tasks = (
        TaskSpec("watch", 1, offset=30.0, scale=20.0, low=0.0, high=100.0),
        TaskSpec("skip", -1, offset=0.1, scale=0.5),
    )
    bank = _bank(tasks=tasks)
    _randomise(bank, 5)
    plain = _bank(tasks=make_tasks(["a", "b"]))
    params = {
        k: v for k, v in bank.state_dict().items() if k not in ("direction", "offset", "scale")
    }
    plain.load_state_dict(params, strict=False)
    state = torch.randn(2, D)
    preds = torch.stack([torch.rand(2, 7) * 100, torch.rand(2, 7)], dim=1)
    x = torch.stack([(preds[:, 0] - 30.0) / 20.0, -(preds[:, 1] - 0.1) / 0.5], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(bank(state, preds), plain(state, x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_monotone_bank_is_monotone_for_random_weights(seed: int) -> None:
    bank = _bank(monotone=True, seed=seed)
    _randomise(bank, 100 + seed, std=2.0)
    grid = torch.linspace(-3.0, 3.0, 1001)
    n_states = 16
    state = torch.randn(n_states, D, generator=torch.Generator().manual_seed(seed)) * 2
    preds = grid.expand(n_states, 3, -1).contiguous()
    with torch.no_grad():
        q = bank(state, preds)  # (S, K, G)
    diff = torch.diff(q, dim=-1)
    assert torch.all(diff[:, :2] >= -1e-6), "direction +1 cells must be non-decreasing"
    assert torch.all(diff[:, 2] <= 1e-6), "direction -1 cell must be non-increasing"
    rise = q[..., -1] - q[..., 0]
    assert torch.all(rise[:, :2] > 0) and torch.all(rise[:, 2] < 0)


def test_non_monotone_bank_can_decrease() -> None:
    """Without the construction, monotonicity is not guaranteed (eq. 17 has to keep it)."""
    bank = _bank(monotone=False)
    with torch.no_grad():
        bank.w_pred.mul_(-1.0)  # w_pred starts positive; flipping it mirrors every cell
        q = bank(torch.zeros(1, D), torch.linspace(-3, 3, 101).expand(1, 3, -1).contiguous())
    assert q.shape == (1, 3, 101)
    assert not torch.all(torch.diff(q[0, 0]) >= 0) or not torch.all(torch.diff(q[0, 1]) >= 0)


# ----------------------------------------------------------------------------- RunningNorm


def test_running_norm_matches_numpy_moments() -> None:
    rng = np.random.default_rng(0)
    norm = RunningNorm(4)
    batches = [rng.normal(3.0, 2.0, (n, 4)) * [1, 10, 0.1, 1] for n in (5, 1, 17, 64, 3)]
    for b in batches:
        norm.update(torch.as_tensor(b, dtype=torch.float32))
    norm.update(torch.zeros(0, 4))  # an empty batch changes nothing
    allx = np.concatenate(batches)
    np.testing.assert_allclose(norm.mean.numpy(), allx.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(norm.var.numpy(), allx.var(0), rtol=1e-4, atol=1e-6)
    assert float(norm.count) == len(allx)
    x = torch.as_tensor(allx[:5], dtype=torch.float32)
    want = (allx[:5] - allx.mean(0)) / np.sqrt(allx.var(0) + norm.eps)
    np.testing.assert_allclose(norm(x).numpy(), want, rtol=1e-4, atol=1e-4)


def test_running_norm_fresh_is_identity_and_clips() -> None:
    norm = RunningNorm(3, clip=5.0)
    x = torch.tensor([[0.5, -2.0, 100.0]])
    torch.testing.assert_close(norm(x), torch.tensor([[0.5, -2.0, 5.0]]), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- actor / critic


def test_actor_within_bounds_and_near_neutral_at_init() -> None:
    torch.manual_seed(0)
    actor = Actor(D, 3, 32, low=-0.45, high=1.5)
    with torch.no_grad():
        a = actor(torch.randn(256, D))
        huge = actor(torch.randn(256, D) * 1e4)
    assert a.shape == (256, 3)
    assert torch.all(a.abs() < 0.05)
    assert torch.all(huge >= -0.45) and torch.all(huge <= 1.5)


def test_actor_neutral_point_is_configurable() -> None:
    torch.manual_seed(0)
    actor = Actor(D, 2, 16, low=-0.45, high=1.5, neutral=0.7)
    with torch.no_grad():
        a = actor(torch.randn(64, D))
    assert torch.all((a - 0.7).abs() < 0.05)


def test_actor_bounds_hold_after_arbitrary_weights() -> None:
    torch.manual_seed(1)
    actor = Actor(D, 3, 16, low=-0.3, high=0.9)
    with torch.no_grad():
        for p in actor.net.parameters():
            p.normal_(0.0, 3.0)
        a = actor(torch.randn(512, D) * 50)
    assert torch.all(a >= actor.low) and torch.all(a <= actor.high)
    assert float(a.max() - a.min()) > 0.1  # not stuck at one value


def test_critic_output_shape() -> None:
    torch.manual_seed(0)
    critic = Critic(D, 3, 32, low=-0.45, high=1.5)
    with torch.no_grad():
        q = critic(torch.randn(10, D), torch.rand(10, 3))
    assert q.shape == (10,)
    assert torch.isfinite(q).all()


def test_critic_depends_on_action() -> None:
    torch.manual_seed(0)
    critic = Critic(D, 3, 32, low=-0.45, high=1.5)
    s = torch.randn(8, D)
    with torch.no_grad():
        q0 = critic(s, torch.full((8, 3), -0.45))
        q1 = critic(s, torch.full((8, 3), 1.5))
    assert not torch.allclose(q0, q1)
