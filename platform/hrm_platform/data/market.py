"""Seeded synthetic market with a known generating process (the embedded default data source).

Each instrument is generated independently from its own child seed (so instrument k is the same whatever
`n_instruments` is). With x_t = log close_t, the process on 15-minute bars is:

1. **Regimes** s_t in {trending, mean_reverting, high_volatility} follow a Markov chain: an episode of
   regime k lasts a geometric number of bars (mean `MEAN_DURATION[k]`), then the next regime is drawn from
   the off-diagonal row `NEXT_REGIME[k]`. Equivalently P[k, k] = 1 - 1/MEAN_DURATION[k].
2. **Volatility clustering** (EGARCH(1,1), Nelson 1991) on standard normal shocks z_t:
       h_t = beta * h_{t-1} + alpha * (|z_{t-1}| - sqrt(2/pi)) + gamma * z_{t-1}
       sigma_t = base_vol * VOL_MULTIPLIER[s_t] * exp(h_t / 2)
   so large moves are followed by large moves, with a leverage effect (gamma < 0).
3. **Returns** relative to a slow exponential moving average ma_t of x (ma_t = ma_{t-1} + lam (x_t - ma_{t-1})),
   with the deviation e_t = x_t - ma_t:
       r_t = mu_t - kappa[s_t] * e_{t-1} + sigma_t * z_t,    x_t = x_{t-1} + r_t
   - trending: a persistent drift mu_t = +-DRIFT * base_vol, drawn with a random sign when the episode starts
     and constant through it; kappa = 0.
   - mean_reverting: mu_t = 0; kappa > 0 pulls the price back towards its slow moving average.
   - high_volatility: mu_t = 0, kappa = 0, volatility multiplied by VOL_MULTIPLIER.
4. **Bars**: close_t = exp(x_t); open_t = close_{t-1} * exp(0.1 sigma_t n1) (a small gap);
   high_t = max(open, close) * exp(0.5 sigma_t |n2|), low_t = min(open, close) * exp(-0.5 sigma_t |n3|);
   volume_t = V * exp(0.3 n4) * (0.5 + |r_t| / base_vol), so volume rises with absolute returns. All prices
   are positive and low <= open, close <= high by construction.

Trending episodes move the price level like a random walk of drifts, so very long series wander far in
log price (about e^±10 over a million bars); every feature and label uses log ratios, so nothing depends on
the level.

**Oracle.** Given the state at t (s_t, mu_t, e_t), the expected forward log return over h bars is linear in
(mu_t, e_t) with coefficients that depend on s_t only: the chain is a Markov jump linear system, and
`_oracle_coefficients` propagates E[state * 1{s = j}] through the transition matrix for h steps (a fresh
trending episode draws a drift of random sign, so its expected drift is 0). Realised forward returns equal
the oracle plus zero-mean noise, which makes the oracle the ceiling a model of the windows can approach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

REGIME_NAMES = ("trending", "mean_reverting", "high_volatility")
TRENDING, MEAN_REVERTING, HIGH_VOLATILITY = 0, 1, 2

MEAN_DURATION = np.array([300.0, 300.0, 120.0])  # bars per episode, by regime
NEXT_REGIME = np.array([  # where an episode goes when it ends (rows sum to 1, zero diagonal)
    [0.0, 0.6, 0.4],
    [0.6, 0.0, 0.4],
    [0.5, 0.5, 0.0],
])
VOL_MULTIPLIER = np.array([0.8, 0.9, 2.2])
MEAN_REVERSION = np.array([0.0, 0.20, 0.0])  # kappa by regime
DRIFT = 0.22  # |mu| in units of base_vol per bar while trending
EMA_RATE = 0.03  # lam: the slow moving average the mean-reverting regime pulls towards (half-life ~23 bars)
EGARCH_BETA, EGARCH_ALPHA, EGARCH_GAMMA = 0.98, 0.12, -0.04

BAR_MINUTES = 15
START = pd.Timestamp("2024-01-01", tz="UTC")
_BLOCK = 32  # block length of the vectorised linear recurrence


@dataclass(frozen=True)
class SyntheticMarket:
    """Bars plus the hidden truth of how they were made."""

    bars: dict[str, pd.DataFrame]  # symbol -> (T, 5) open/high/low/close/volume, UTC 15-min DatetimeIndex
    regimes: dict[str, np.ndarray]  # symbol -> (T,) int8 index into REGIME_NAMES
    expected_log_return: dict[str, np.ndarray]  # symbol -> (T,) float64 oracle E[x_{t+h} - x_t]; NaN at the end
    horizon: int


def generate_market(n_instruments: int, n_bars: int, seed: int, horizon: int) -> SyntheticMarket:
    """`n_instruments` symbols SYN00, SYN01, ... of `n_bars` bars each; deterministic in `seed`."""
    if n_instruments < 1 or n_bars < 2 or horizon < 1:
        raise ValueError(
            f"need n_instruments >= 1, n_bars >= 2, horizon >= 1 (got {n_instruments}, {n_bars}, {horizon})"
        )
    child_seeds = np.random.SeedSequence(seed).spawn(n_instruments)
    index = pd.date_range(START, periods=n_bars, freq=f"{BAR_MINUTES}min", name="timestamp")
    coefficients = _oracle_coefficients(horizon)  # (3, 2)
    bars, regimes, oracle = {}, {}, {}
    for number, child in enumerate(child_seeds):
        symbol = f"SYN{number:02d}"
        frame, regime, drift, deviation = _generate_instrument(np.random.default_rng(child), n_bars, index)
        bars[symbol], regimes[symbol] = frame, regime
        oracle[symbol] = _expected_log_return(coefficients, regime, drift, deviation, horizon)
    return SyntheticMarket(bars=bars, regimes=regimes, expected_log_return=oracle, horizon=horizon)


def transition_matrix() -> np.ndarray:
    """(3, 3) per-bar regime transition probabilities implied by MEAN_DURATION and NEXT_REGIME."""
    leave = 1.0 / MEAN_DURATION
    return np.diag(1.0 - leave) + leave[:, None] * NEXT_REGIME


def _generate_instrument(rng: np.random.Generator, n_bars: int, index: pd.DatetimeIndex):
    base_vol = rng.uniform(0.003, 0.008)  # per-bar volatility scale of this instrument
    regime, drift = _regime_path(rng, n_bars, base_vol)  # (T,) int8, (T,) float64
    shocks = rng.standard_normal(n_bars)  # z_t
    sigma = base_vol * VOL_MULTIPLIER[regime] * np.exp(0.5 * _egarch_log_variance(shocks))
    # e_t = (1 - lam)(1 - kappa_t) e_{t-1} + (1 - lam)(mu_t + sigma_t z_t), e_0 = 0
    keep = 1.0 - EMA_RATE
    innovation = keep * (drift + sigma * shocks)
    innovation[0] = 0.0
    deviation = linear_recurrence(keep * (1.0 - MEAN_REVERSION[regime]), innovation)
    log_return = np.empty(n_bars)
    log_return[0] = 0.0
    log_return[1:] = deviation[1:] / keep - deviation[:-1]  # r_t = e_t / (1 - lam) - e_{t-1}
    close = np.exp(np.log(rng.uniform(20.0, 200.0)) + np.cumsum(log_return))
    frame = _bars_from_close(rng, close, log_return, sigma, base_vol, index)
    return frame, regime, drift, deviation


def _regime_path(rng: np.random.Generator, n_bars: int, base_vol: float) -> tuple[np.ndarray, np.ndarray]:
    """Episodes of geometric length; a trending episode carries a constant drift of random sign."""
    regime = np.empty(n_bars, dtype=np.int8)
    drift = np.zeros(n_bars)
    state, start = int(rng.integers(3)), 0
    while start < n_bars:
        stop = min(n_bars, start + int(rng.geometric(1.0 / MEAN_DURATION[state])))
        regime[start:stop] = state
        if state == TRENDING:
            drift[start:stop] = rng.choice((-1.0, 1.0)) * DRIFT * base_vol
        state, start = int(rng.choice(3, p=NEXT_REGIME[state])), stop
    return regime, drift


def _egarch_log_variance(shocks: np.ndarray) -> np.ndarray:
    """(T,) h_t of the EGARCH(1,1) recursion driven by z_{t-1}; h_0 = 0 (its stationary mean)."""
    impulse = np.zeros_like(shocks)
    impulse[1:] = EGARCH_ALPHA * (np.abs(shocks[:-1]) - np.sqrt(2.0 / np.pi)) + EGARCH_GAMMA * shocks[:-1]
    return linear_recurrence(np.full_like(shocks, EGARCH_BETA), impulse)


def linear_recurrence(decay: np.ndarray, innovation: np.ndarray) -> np.ndarray:
    """y_t = decay_t * y_{t-1} + innovation_t with y_{-1} = 0, vectorised in blocks; needs 0 < decay <= 1.

    Inside a block, y_j = A_j * (y_in + sum_{i<=j} u_i / A_i) with A_j = prod_{i<=j} a_i; only the carry
    between blocks is sequential (T / 32 scalar steps), so 1M bars take milliseconds.
    """
    n = decay.shape[0]
    padded = -(-n // _BLOCK) * _BLOCK
    a = np.ones(padded)
    u = np.zeros(padded)
    a[:n], u[:n] = decay, innovation
    a, u = a.reshape(-1, _BLOCK), u.reshape(-1, _BLOCK)  # (blocks, B)
    growth = np.cumprod(a, axis=1)  # (blocks, B): A_j
    local = growth * np.cumsum(u / growth, axis=1)  # (blocks, B): y_j when the block starts from 0
    carry_in = np.empty(a.shape[0])  # y just before each block
    carry = 0.0
    for block, (block_growth, block_end) in enumerate(zip(growth[:, -1], local[:, -1])):
        carry_in[block] = carry
        carry = block_growth * carry + block_end
    return (local + growth * carry_in[:, None]).reshape(-1)[:n]


def _bars_from_close(
    rng: np.random.Generator,
    close: np.ndarray,
    log_return: np.ndarray,
    sigma: np.ndarray,
    base_vol: float,
    index: pd.DatetimeIndex,
) -> pd.DataFrame:
    n_bars = close.shape[0]
    previous_close = np.concatenate(([close[0]], close[:-1]))
    open_ = previous_close * np.exp(0.1 * sigma * rng.standard_normal(n_bars))
    high = np.maximum(open_, close) * np.exp(0.5 * sigma * np.abs(rng.standard_normal(n_bars)))
    low = np.minimum(open_, close) * np.exp(-0.5 * sigma * np.abs(rng.standard_normal(n_bars)))
    typical_volume = rng.uniform(5e3, 5e4)
    volume = typical_volume * np.exp(0.3 * rng.standard_normal(n_bars)) * (0.5 + np.abs(log_return) / base_vol)
    columns = {"open": open_, "high": high, "low": low, "close": close, "volume": volume}
    return pd.DataFrame(columns, index=index)


def _oracle_coefficients(horizon: int) -> np.ndarray:
    """(3, 2): E[x_{t+h} - x_t | s_t = i] = coef[i, 0] * mu_t + coef[i, 1] * e_t (exact for this process).

    Per-regime moments q[j] = E[(mu, e, c) * 1{s = j}] as linear maps of (mu_t, e_t), shape (3 regimes, 3, 2),
    pushed through one bar at a time: s' ~ P[s], mu' = mu if s = s' = trending else (fresh or 0, mean 0),
    c' = c + mu' - kappa[s'] e,  e' = (1 - lam)(mu' + (1 - kappa[s']) e).
    """
    transitions = transition_matrix()
    keep = 1.0 - EMA_RATE
    coefficients = np.zeros((3, 2))
    for start in range(3):
        moments = np.zeros((3, 3, 2))  # (regime j, state component [mu, e, c], initial [mu_t, e_t])
        moments[start, 0, 0] = moments[start, 1, 1] = 1.0
        for _ in range(horizon):
            moments = _propagate(moments, transitions, keep)
        coefficients[start] = moments[:, 2, :].sum(axis=0)
    return coefficients


def _propagate(moments: np.ndarray, transitions: np.ndarray, keep: float) -> np.ndarray:
    following = np.zeros_like(moments)
    for i in range(3):
        for j in range(3):
            mu, deviation, cumulative = moments[i]  # each (2,)
            kept_drift = mu if i == j == TRENDING else np.zeros_like(mu)
            kappa = MEAN_REVERSION[j]
            step = np.stack([
                kept_drift,
                keep * (kept_drift + (1.0 - kappa) * deviation),
                cumulative + kept_drift - kappa * deviation,
            ])
            following[j] += transitions[i, j] * step
    return following


def _expected_log_return(
    coefficients: np.ndarray, regime: np.ndarray, drift: np.ndarray, deviation: np.ndarray, horizon: int
) -> np.ndarray:
    expected = coefficients[regime, 0] * drift + coefficients[regime, 1] * deviation  # (T,)
    expected[max(0, regime.shape[0] - horizon):] = np.nan
    return expected
