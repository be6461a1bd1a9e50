"""The theory behind GEM on tabular problems, with the real functional core.

- Deterministic MDP: repeated refresh-and-fit with the GEM operator reaches Q*.
- Stochastic rewards and noisy critics: the twin estimate overestimates less than a
  single-estimator max over horizons.
"""

from __future__ import annotations

import pytest
import torch

from torchrl_gem import twin_backprop_return

N_STATES, GOAL, GAMMA = 6, 5, 0.9  # states 0..5, 5 is terminal; actions 0 left 1 right


def step(state, action):
    nxt = state + 1 if action == 1 else max(state - 1, 0)
    return nxt, float(nxt == GOAL), nxt == GOAL


def optimal_q():
    value = torch.tensor(
        [GAMMA ** (GOAL - 1 - s) for s in range(GOAL)] + [0.0], dtype=torch.float64
    )
    q = torch.zeros(N_STATES, 2, dtype=torch.float64)
    for s in range(GOAL):
        for a in (0, 1):
            nxt, reward, terminal = step(s, a)
            q[s, a] = reward + (0.0 if terminal else GAMMA * value[nxt])
    return q


def chain_memory(generator):
    """Every (state, action) starts a trajectory; random actions afterwards."""
    rows = []  # (s, a, r, s', done, terminated)
    for s0 in range(GOAL):
        for a0 in (0, 1):
            state, action = s0, a0
            for t in range(8):
                nxt, reward, terminal = step(state, action)
                last = terminal or t == 7
                rows.append((state, action, reward, nxt, last, terminal))
                if last:
                    break
                state = nxt
                action = int(torch.randint(2, (), generator=generator))
    cols = list(zip(*rows, strict=True))
    as_long = lambda i: torch.tensor(cols[i])  # noqa: E731
    flag = lambda i: torch.tensor(cols[i]).unsqueeze(-1)  # noqa: E731
    reward = torch.tensor(cols[2], dtype=torch.float64).unsqueeze(-1)
    return as_long(0), as_long(1), reward, as_long(3), flag(4), flag(5)


@pytest.mark.parametrize("single_estimator", [False, True])
def test_refresh_and_fit_reaches_q_star_on_a_deterministic_chain(single_estimator):
    generator = torch.Generator().manual_seed(0)
    state, action, reward, next_state, done, terminated = chain_memory(generator)
    tables = torch.randn(4, N_STATES, 2, generator=generator, dtype=torch.float64)
    tables[:, GOAL] = 0.0
    groups = [[0, 1], [2, 3]] if not single_estimator else [[0, 1, 2, 3]] * 2
    for _ in range(300):
        values = torch.stack(
            [tables[g].min(0).values.max(-1).values[next_state] for g in groups], -1
        )
        returns = twin_backprop_return(GAMMA, values, reward, done, terminated)
        target = returns.mean(-1)  # broadcast regression with an l2 loss
        fitted = torch.zeros(N_STATES, 2, dtype=torch.float64)
        count = torch.zeros(N_STATES, 2, dtype=torch.float64)
        fitted.index_put_((state, action), target, accumulate=True)
        count.index_put_((state, action), torch.ones_like(target), accumulate=True)
        tables[:] = torch.where(count > 0, fitted / count.clamp(min=1), tables)
    expected = optimal_q()
    for table in tables:
        torch.testing.assert_close(table[:GOAL], expected[:GOAL], atol=1e-8, rtol=0)


def test_twin_estimate_overestimates_less_than_a_single_or_uncrossed_one():
    # Zero-mean random rewards and zero true values everywhere: any positive mean of
    # the returns is overestimation. The two critics carry independent unit noise.
    # Reward luck is shared by both estimators (the stochastic-MDP bias that no
    # double estimator removes); critic noise is what twin evaluation cancels.
    generator = torch.Generator().manual_seed(1)
    episodes, length = 4000, 20
    reward = 0.3 * torch.randn(
        episodes, length, 1, generator=generator, dtype=torch.float64
    )
    noise = torch.randn(episodes, length, 2, generator=generator, dtype=torch.float64)
    done = torch.zeros(episodes, length, 1, dtype=torch.bool)
    twin = twin_backprop_return(0.99, noise, reward, done, done)
    single = twin_backprop_return(
        0.99, noise[..., :1].expand(-1, -1, 2), reward, done, done
    )
    # two estimators, each valuing its own pick: the cross-evaluation removed alone
    own = twin_backprop_return(0.99, noise, reward, done, done, cross_evaluation=False)
    twin_bias, single_bias = twin.mean().item(), single.mean().item()
    own_bias = own.mean().item()
    # measured: twin about 0.60, single and own about 1.43 (seeds 0-2)
    assert single_bias > 1.2  # the max over horizons of noisy estimates
    assert twin_bias < 0.5 * single_bias
    # a second estimator helps only through the cross-evaluation
    assert own_bias > 1.2 and twin_bias < 0.5 * own_bias
