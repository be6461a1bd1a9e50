"""The twin back-propagation core: a brute-force oracle and hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from torchrl_gem import functional, twin_backprop_return


@pytest.fixture(params=["numpy", "torch"])
def scan_module(request, monkeypatch):
    """Both array modules of the scan's loop; CPU picks NumPy, accelerators torch."""
    if request.param == "torch":
        monkeypatch.setattr(functional, "_loop_module", lambda device: torch)
    return request.param


def oracle(
    gamma,
    value,
    reward,
    done,
    terminated,
    cut=None,
    max_horizon=None,
    zero_tail=False,
    floor="own",
    cross_evaluation=True,
):
    """Enumerate every candidate of the definition, one transition at a time.

    Inputs are [T, 2] / [T, 1] float64 lists; returns two [T, 2] lists: the returns,
    and the horizon each column is evaluated on (the other estimator's pick, or its
    own without the cross-evaluation). A trajectory ends at done, at cut and at the
    last step; only done ends offer the zero tail (horizon end - t + 2).
    """
    num_steps = len(reward)
    cut = cut or [False] * num_steps
    horizon = max_horizon if max_horizon is not None else 10**9
    out, horizons = [], []
    for t in range(num_steps):
        end = t
        while not (done[end] or cut[end]) and end < num_steps - 1:
            end += 1
        candidates, lengths = [], []  # per candidate: (G^0, G^1), its n
        for n in range(1, min(end - t + 1, horizon) + 1):
            lengths.append(n)
            rewards = sum(gamma**j * reward[t + j] for j in range(n))
            last = t + n - 1
            keep = 0.0 if terminated[last] else 1.0
            candidates.append(
                tuple(rewards + gamma**n * keep * value[last][k] for k in (0, 1))
            )
        if zero_tail and done[end] and end - t + 2 <= horizon:
            tail = sum(gamma**j * reward[t + j] for j in range(end - t + 1))
            candidates.append((tail, tail))
            lengths.append(end - t + 2)
        best = [
            max(range(len(candidates)), key=lambda i, k=k: (candidates[i][k], -i))
            for k in (0, 1)
        ]
        if not cross_evaluation:  # each estimator's own best, nothing to floor
            out.append([candidates[best[k]][k] for k in (0, 1)])
            horizons.append([lengths[best[k]] for k in (0, 1)])
            continue
        row = []
        for k in (0, 1):
            other = 1 - k
            own_floor = candidates[0][k] if floor == "own" else candidates[0][other]
            row.append(max(candidates[best[other]][k], own_floor))
        out.append(row)
        horizons.append([lengths[best[1]], lengths[best[0]]])
    return out, horizons


def random_case(
    generator, batch, num_steps, p_done=0.15, p_terminated=0.5, dtype=torch.float64
):
    value = torch.randn(*batch, num_steps, 2, generator=generator, dtype=dtype) * 3
    reward = torch.randn(*batch, num_steps, 1, generator=generator, dtype=dtype)
    done = torch.rand(*batch, num_steps, 1, generator=generator) < p_done
    terminated = done & (
        torch.rand(*batch, num_steps, 1, generator=generator) < p_terminated
    )
    # the last step (always an end) is more often terminal; done = terminated | ...
    terminated[..., -1, :] |= torch.rand(*batch, 1, generator=generator) < 0.3
    done |= terminated
    return value, reward, done, terminated


def check_against_oracle(gamma, value, reward, done, terminated, cut=None, **kwargs):
    result, horizon = twin_backprop_return(
        gamma, value, reward, done, terminated, cut=cut, return_horizon=True, **kwargs
    )
    plain = twin_backprop_return(
        gamma, value, reward, done, terminated, cut=cut, **kwargs
    )
    assert torch.equal(plain, result)
    flat = lambda x: x.reshape(-1, *x.shape[-2:])  # noqa: E731
    cuts = flat(cut) if cut is not None else [None] * len(flat(done))
    for v, r, d, term, c, res, hor in zip(
        flat(value),
        flat(reward),
        flat(done),
        flat(terminated),
        cuts,
        flat(result),
        flat(horizon),
        strict=True,
    ):
        expected, expected_horizon = oracle(
            gamma,
            v.tolist(),
            r.squeeze(-1).tolist(),
            d.squeeze(-1).tolist(),
            term.squeeze(-1).tolist(),
            None if c is None else c.squeeze(-1).tolist(),
            **kwargs,
        )
        torch.testing.assert_close(
            res, torch.tensor(expected, dtype=res.dtype), rtol=1e-10, atol=1e-10
        )
        assert hor.tolist() == expected_horizon


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("num_steps", [1, 2, 7, 40])
@pytest.mark.parametrize("zero_tail", [False, True])
@pytest.mark.parametrize(
    "options",
    [
        {"floor": "own"},
        {"floor": "selector"},
        {"floor": "selector", "cross_evaluation": False},  # the floor has no effect
    ],
    ids=["own floor", "selector floor", "no cross-evaluation"],
)
def test_scan_matches_oracle(gamma, num_steps, zero_tail, options, scan_module):
    generator = torch.Generator().manual_seed(num_steps)
    case = random_case(generator, (3,), num_steps)
    check_against_oracle(gamma, *case, zero_tail=zero_tail, **options)


@pytest.mark.parametrize("max_horizon", [1, 2, 3, 5, 39, 40, 41])
@pytest.mark.parametrize("zero_tail", [False, True])
@pytest.mark.parametrize("gamma", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("cross_evaluation", [True, False])
def test_finite_horizon_matches_oracle(max_horizon, zero_tail, gamma, cross_evaluation):
    generator = torch.Generator().manual_seed(max_horizon)
    case = random_case(generator, (4,), 40, p_done=0.08)
    check_against_oracle(
        gamma,
        *case,
        max_horizon=max_horizon,
        zero_tail=zero_tail,
        cross_evaluation=cross_evaluation,
    )


@pytest.mark.parametrize("max_horizon", [None, 2, 4])
@pytest.mark.parametrize("zero_tail", [False, True])
def test_ties_on_integer_data_match_oracle(max_horizon, zero_tail, scan_module):
    # Small integers with gamma = 1 make equal candidates common, so the
    # shortest-horizon tie rule is exercised on both paths.
    generator = torch.Generator().manual_seed(5)
    value, reward, done, terminated = random_case(generator, (30,), 9, p_done=0.2)
    value = torch.randint(-2, 3, value.shape, generator=generator).double()
    reward = torch.randint(0, 2, reward.shape, generator=generator).double()
    check_against_oracle(
        1.0,
        value,
        reward,
        done,
        terminated,
        max_horizon=max_horizon,
        zero_tail=zero_tail,
    )


def random_cuts(generator, done, p_cut=0.1):
    """Cut flags, some of them on steps that are also done."""
    return torch.rand(done.shape, generator=generator) < p_cut


@pytest.mark.parametrize("max_horizon", [None, 1, 3, 40])
@pytest.mark.parametrize("zero_tail", [False, True])
def test_cuts_match_oracle(max_horizon, zero_tail, scan_module):
    generator = torch.Generator().manual_seed(7)
    value, reward, done, terminated = random_case(generator, (5,), 40, p_done=0.1)
    cut = random_cuts(generator, done)
    check_against_oracle(
        0.9,
        value,
        reward,
        done,
        terminated,
        cut=cut,
        max_horizon=max_horizon,
        zero_tail=zero_tail,
    )


def test_zero_tail_only_after_the_environments_ends():
    # r = 1 and V(s') = -10 at the end of a one-step trajectory, gamma = 0.99.
    reward, value = torch.ones(1, 1), torch.full((1, 2), -10.0)
    no = torch.zeros(1, 1, dtype=torch.bool)
    yes = ~no
    # A cut (here: the last index without done) bootstraps: 1 - 9.9.
    at_cut = twin_backprop_return(0.99, value, reward, no, no, zero_tail=True)
    explicit_cut = twin_backprop_return(
        0.99, value, reward, no, no, cut=yes, zero_tail=True
    )
    # An episode the environment truncated also offers the reward-to-go, 1.
    truncated = twin_backprop_return(0.99, value, reward, yes, no, zero_tail=True)
    torch.testing.assert_close(at_cut, torch.full((1, 2), -8.9))
    torch.testing.assert_close(explicit_cut, torch.full((1, 2), -8.9))
    torch.testing.assert_close(truncated, torch.ones(1, 2))


def test_a_cut_inside_a_sequence_separates_trajectories():
    # Two trajectories, the first cut (not done) after step 1: its steps bootstrap
    # from V(s_2) and never see the second trajectory's rewards.
    reward = torch.tensor([[0.0], [0.0], [100.0]])
    value = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    no = torch.zeros(3, 1, dtype=torch.bool)
    cut = torch.tensor([[False], [True], [False]])
    result = twin_backprop_return(1.0, value, reward, no, no, cut=cut)
    assert result[:2].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    chained = twin_backprop_return(1.0, value, reward, no, no)
    assert chained[0].tolist() == [100.0, 100.0]


def test_a_horizon_longer_than_every_trajectory_takes_the_scan(monkeypatch):
    import torchrl_gem.functional as functional

    def fail(*args, **kwargs):
        raise AssertionError("the O(T * H) path ran")

    generator = torch.Generator().manual_seed(6)
    value, reward, done, terminated = random_case(generator, (), 300, p_done=0.0)
    done[9::10] = True  # 30 trajectories of 10 steps in one long sequence
    expected = twin_backprop_return(0.9, value, reward, done, terminated)
    monkeypatch.setattr(functional, "_horizon_limited", fail)
    result = twin_backprop_return(0.9, value, reward, done, terminated, max_horizon=10)
    torch.testing.assert_close(result, expected)
    with pytest.raises(AssertionError, match="O\\(T"):
        twin_backprop_return(0.9, value, reward, done, terminated, max_horizon=9)


def test_batch_dims_and_time_dim():
    generator = torch.Generator().manual_seed(0)
    value, reward, done, terminated = random_case(generator, (2, 3), 11)
    expected = twin_backprop_return(0.9, value, reward, done, terminated)
    check_against_oracle(0.9, value, reward, done, terminated)
    # time first: [T, *B, F]
    moved = [x.movedim(-2, 0) for x in (value, reward, done, terminated)]
    result = twin_backprop_return(0.9, *moved, time_dim=0)
    torch.testing.assert_close(result.movedim(0, -2), expected)


def test_successive_trajectories_equal_separate_ones():
    generator = torch.Generator().manual_seed(1)
    pieces = [random_case(generator, (), n, p_done=0.0) for n in (5, 1, 9)]
    for _, _, done, _ in pieces:
        done[-1] = True
    joined = [torch.cat(parts) for parts in zip(*pieces, strict=True)]
    together = twin_backprop_return(0.99, *joined)
    apart = torch.cat([twin_backprop_return(0.99, *piece) for piece in pieces])
    torch.testing.assert_close(together, apart)


def test_hand_computed_truncated_end_bootstraps():
    # r = (1, 0, 2), V(s_3) = (5, 1) at a cut: estimator 0 picks n = 3 (value 8) and
    # estimator 1 evaluates it (4) but is floored by its own one-step target 7.
    reward = torch.tensor([[1.0], [0.0], [2.0]])
    value = torch.tensor([[0.0, 6.0], [0.0, 0.0], [5.0, 1.0]])
    done = torch.tensor([[False], [False], [True]])
    result = twin_backprop_return(1.0, value, reward, done, torch.zeros_like(done))
    assert result.tolist() == [[1.0, 7.0], [7.0, 3.0], [7.0, 3.0]]
    # Without the cross-evaluation each keeps its own pick: t=0 G^0 = (1, 1, 8) -> 8,
    # G^1 = (7, 1, 4) -> 7; t=1 G^0 = (0, 7), G^1 = (0, 3); t=2 (7, 3).
    result, horizon = twin_backprop_return(
        1.0,
        value,
        reward,
        done,
        torch.zeros_like(done),
        cross_evaluation=False,
        return_horizon=True,
    )
    assert result.tolist() == [[8.0, 7.0], [7.0, 3.0], [7.0, 3.0]]
    assert horizon.tolist() == [[3, 1], [2, 2], [1, 1]]


def test_hand_computed_terminated_end_does_not_bootstrap():
    reward = torch.tensor([[1.0], [1.0]])
    value = torch.tensor([[0.0, 0.0], [100.0, 100.0]])
    done = torch.tensor([[False], [True]])
    terminated = done.clone()
    result = twin_backprop_return(0.5, value, reward, done, terminated)
    # t=1: r = 1 and no bootstrap; t=0: max(1 + 0.5 * 0, 1 + 0.5 * 1) = 1.5
    assert result.tolist() == [[1.5, 1.5], [1.0, 1.0]]


def test_hand_computed_cross_evaluation_and_ties():
    # Estimator 0 prefers the rollout, estimator 1 prefers bootstrapping at once.
    # gamma = 1, r = (0, 0), values V(s_1) = (1, 4), V(s_2) = (3, 2), cut at the end.
    reward = torch.zeros(2, 1)
    value = torch.tensor([[1.0, 4.0], [3.0, 2.0]])
    done = torch.tensor([[False], [True]])
    result = twin_backprop_return(1.0, value, reward, done, torch.zeros_like(done))
    # t=0: G^0 = (1, 3) -> n^0 = 2; G^1 = (4, 2) -> n^1 = 1.
    #      out0 = max(G^0(1), G^0(1)) = 1, out1 = max(G^1(2), G^1(1)) = 4.
    assert result[0].tolist() == [1.0, 4.0]
    # Ties go to the shortest horizon: estimator 0's candidates tie (2, 2), so it
    # picks n = 1 and estimator 1 evaluates that as 0, not as G^1(2) = 5.
    value = torch.tensor([[2.0, 0.0], [2.0, 5.0]])
    result = twin_backprop_return(1.0, value, reward, done, torch.zeros_like(done))
    assert result[0].tolist() == [2.0, 0.0]


def test_result_is_at_least_the_one_step_target():
    generator = torch.Generator().manual_seed(3)
    value, reward, done, terminated = random_case(generator, (8,), 30)
    result = twin_backprop_return(0.99, value, reward, done, terminated)
    one_step = reward + 0.99 * value * (~terminated)
    assert (result >= one_step - 1e-12).all()


def test_dtype_device_and_no_grad():
    value = torch.randn(4, 2, requires_grad=True)
    reward = torch.randn(4, 1, requires_grad=True)
    done = torch.zeros(4, 1, dtype=torch.bool)
    result = twin_backprop_return(0.9, value, reward, done, done)
    assert result.dtype == torch.float32 and not result.requires_grad
    result = twin_backprop_return(0.9, value.double(), reward, done, done)
    assert result.dtype == torch.float64


def test_float32_scan_on_long_episode_is_accurate():
    generator = torch.Generator().manual_seed(4)
    value, reward, done, terminated = random_case(generator, (2,), 1000, p_done=0.0)
    exact = twin_backprop_return(0.99, value, reward, done, terminated)
    single = twin_backprop_return(0.99, value.float(), reward.float(), done, terminated)
    torch.testing.assert_close(single.double(), exact, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v, r, d, t: (v[..., :1], r, d, t), "shape \\[\\*B, T, 2\\]"),
        (lambda v, r, d, t: (v, r[:-1], d, t), "reward must have shape"),
        (lambda v, r, d, t: (v, r, d.float(), t), "done must be a bool"),
        (lambda v, r, d, t: (v, r, d, t.long()), "terminated must be a bool"),
        (lambda v, r, d, t: (v, r, d[..., 0], t), "done must have shape"),
        (lambda v, r, d, t: (v[:0], r[:0], d[:0], t[:0]), "at least one transition"),
        (  # a termination the horizons would run past
            lambda v, r, d, t: (v, r, d, t.index_fill(0, torch.tensor([2]), True)),
            "terminated is set where done is not, at index \\[2, 0\\]",
        ),
    ],
)
def test_bad_inputs_raise(change, message):
    value, reward = torch.zeros(5, 2), torch.zeros(5, 1)
    done = torch.zeros(5, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match=message):
        twin_backprop_return(0.9, *change(value, reward, done, done.clone()))


@pytest.mark.parametrize(
    "cut, message",
    [
        (torch.zeros(5, 1), "cut must be a bool"),
        (torch.zeros(5, dtype=torch.bool), "cut must have shape \\(5, 1\\)"),
    ],
)
def test_bad_cut_raises(cut, message):
    value, reward = torch.zeros(5, 2), torch.zeros(5, 1)
    done = torch.zeros(5, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match=message):
        twin_backprop_return(0.9, value, reward, done, done, cut=cut)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", ["reward", "next_state_value"])
def test_non_finite_inputs_raise_with_their_name_and_index(bad, name):
    value, reward = torch.zeros(5, 2), torch.zeros(5, 1)
    done = torch.zeros(5, 1, dtype=torch.bool)
    (reward if name == "reward" else value)[3, 0] = bad
    with pytest.raises(
        ValueError, match=f"{name} has a non-finite .* index \\(3, 0\\)"
    ):
        twin_backprop_return(0.9, value, reward, done, done)


@pytest.mark.parametrize("time_dim", [-1, 2, 3, -4, 1.0])
def test_bad_time_dim_raises(time_dim):
    value, reward = torch.zeros(3, 5, 2), torch.zeros(3, 5, 1)
    done = torch.zeros(3, 5, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="time_dim"):
        twin_backprop_return(0.9, value, reward, done, done, time_dim=time_dim)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_values_scan_in_fp32(dtype):
    generator = torch.Generator().manual_seed(5)
    value, reward, done, terminated = random_case(generator, (3,), 40)
    low = value.to(dtype)
    result = twin_backprop_return(0.99, low, reward, done, terminated)
    in_fp32 = twin_backprop_return(0.99, low.float(), reward, done, terminated)
    assert result.dtype == dtype
    assert torch.equal(result, in_fp32.to(dtype))


def test_bad_options_raise():
    value, reward = torch.zeros(5, 2), torch.zeros(5, 1)
    done = torch.zeros(5, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="gamma"):
        twin_backprop_return(1.5, value, reward, done, done)
    with pytest.raises(ValueError, match="max_horizon"):
        twin_backprop_return(0.9, value, reward, done, done, max_horizon=0)
    with pytest.raises(ValueError, match="floor"):
        twin_backprop_return(0.9, value, reward, done, done, floor="min")


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
