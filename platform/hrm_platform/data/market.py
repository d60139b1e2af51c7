"""Seeded synthetic market with a known generating process (the embedded default data source).

Each instrument is generated independently from its own child seed (so instrument k is the same whatever
`n_instruments` is). Bars are 15 minutes long on a weekday session calendar (`session_calendar`: 26 bars from
09:30 UTC each Monday..Friday, none at weekends), so the timestamps hold BARS_PER_YEAR (~6783) bars a year,
the frequency the market states in `SyntheticMarket.bars_per_year`. With x_t = log close_t, the process is:

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
   - mean_reverting: mu_t = 0; a gentle kappa > 0 pulls the price back towards its slow moving average.
   - high_volatility: mu_t = 0, volatility multiplied by VOL_MULTIPLIER and a stronger pull back (reversal
     pays most in turbulent markets, where liquidity is scarce).
   `signal_strength` multiplies DRIFT and MEAN_REVERSION together; the vol process does not change with it.
4. **Bars**: close_t = exp(x_t); open_t = close_{t-1} * exp(0.1 sigma_t n1) (a small gap);
   high_t = max(open, close) * exp(0.5 sigma_t |n2|), low_t = min(open, close) * exp(-0.5 sigma_t |n3|);
   volume_t = V * exp(0.3 n4) * (0.5 + |r_t| / base_vol), so volume rises with absolute returns. All prices
   are positive and low <= open, close <= high by construction.

The log price is close to a random walk, so very long series wander far (about e^±8 over a million bars);
every feature and label uses log ratios, so nothing depends on the level.

**How predictable.** The signal is small next to the noise, as in real markets. At signal_strength 1
(seeds 0..9, 4 instruments x 6,000 bars, horizon 8, 1 bp costs) the oracle's expected 8-bar return has an
information coefficient of ~0.12 with the realised one, and trading its sign every bar earns an annualised
Sharpe of ~4 on the equal-weight portfolio; buy and hold ~0.6; lag-1 autocorrelation of returns ~-0.01 and
of |returns| ~0.29. `python -m benchmarks.market_calibration` measures these. signal_strength 2 gives an IC of
~0.20, 4 ~0.30, and 20 (IC ~0.58) has the trend and mean reversion of the uncalibrated first version, which
small models learn within a few dozen batches.

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

from hrm_platform.config import DataConfig

REGIME_NAMES = ("trending", "mean_reverting", "high_volatility")
TRENDING, MEAN_REVERTING, HIGH_VOLATILITY = 0, 1, 2

MEAN_DURATION = np.array([300.0, 300.0, 120.0])  # bars per episode, by regime
NEXT_REGIME = np.array([  # where an episode goes when it ends (rows sum to 1, zero diagonal)
    [0.0, 0.6, 0.4],
    [0.6, 0.0, 0.4],
    [0.5, 0.5, 0.0],
])
VOL_MULTIPLIER = np.array([0.8, 0.9, 2.2])
# The predictable part at signal_strength 1, calibrated to an oracle IC of ~0.12 and Sharpe ~4
# (benchmarks/market_calibration.py). The volatile regime reverts hardest: a given IC costs the least Sharpe
# there, where bars are noisiest, as with real reversal profits.
MEAN_REVERSION = np.array([0.0, 0.01, 0.02])  # kappa by regime
DRIFT = 0.011  # |mu| in units of base_vol per bar while trending
DEFAULT_SIGNAL_STRENGTH = DataConfig.model_fields["signal_strength"].default  # the one default lives in config.py
EMA_RATE = 0.03  # lam: the slow moving average that kappa pulls towards (half-life ~23 bars)
EGARCH_BETA, EGARCH_ALPHA, EGARCH_GAMMA = 0.98, 0.12, -0.04

BAR_MINUTES = 15
BARS_PER_DAY = 26  # one session per weekday, timestamps 09:30 .. 15:45 UTC
SESSION_OPEN = pd.Timedelta(hours=9, minutes=30)
BARS_PER_YEAR = BARS_PER_DAY * 365.25 * 5 / 7  # 26 bars x ~260.9 weekdays = ~6783
START = pd.Timestamp("2024-01-01", tz="UTC")  # a Monday
_BLOCK = 32  # block length of the vectorised linear recurrence


@dataclass(frozen=True)
class SyntheticMarket:
    """Bars plus the hidden truth of how they were made."""

    bars: dict[str, pd.DataFrame]  # symbol -> (T, 5) open/high/low/close/volume, UTC session_calendar index
    regimes: dict[str, np.ndarray]  # symbol -> (T,) int8 index into REGIME_NAMES
    expected_log_return: dict[str, np.ndarray]  # symbol -> (T,) float64 oracle E[x_{t+h} - x_t]; NaN at the end
    horizon: int
    bars_per_year: float = BARS_PER_YEAR  # the calendar's stated frequency
    signal_strength: float = DEFAULT_SIGNAL_STRENGTH


def generate_market(
    n_instruments: int,
    n_bars: int,
    seed: int,
    horizon: int,
    *,
    signal_strength: float = DEFAULT_SIGNAL_STRENGTH,
) -> SyntheticMarket:
    """`n_instruments` symbols SYN00, SYN01, ... of `n_bars` bars each; deterministic in `seed`.

    `signal_strength` scales the trend drift and the mean reversion together (1 = the calibrated default).
    """
    if n_instruments < 1 or n_bars < 2 or horizon < 1:
        raise ValueError(
            f"need n_instruments >= 1, n_bars >= 2, horizon >= 1 (got {n_instruments}, {n_bars}, {horizon})"
        )
    kappa = signal_strength * MEAN_REVERSION  # (3,) one array for the generator and the oracle alike
    if signal_strength <= 0 or kappa.max() >= 1.0:
        raise ValueError(f"signal_strength must be > 0 and keep kappa below 1 (got {signal_strength})")
    child_seeds = np.random.SeedSequence(seed).spawn(n_instruments)
    index = session_calendar(n_bars)
    coefficients = _oracle_coefficients(horizon, kappa)  # (3, 2)
    bars, regimes, oracle = {}, {}, {}
    for number, child in enumerate(child_seeds):
        symbol = f"SYN{number:02d}"
        rng = np.random.default_rng(child)
        frame, regime, drift, deviation = _generate_instrument(rng, n_bars, index, signal_strength * DRIFT, kappa)
        bars[symbol], regimes[symbol] = frame, regime
        oracle[symbol] = _expected_log_return(coefficients, regime, drift, deviation, horizon)
    return SyntheticMarket(
        bars=bars, regimes=regimes, expected_log_return=oracle, horizon=horizon, signal_strength=signal_strength
    )


def session_calendar(n_bars: int) -> pd.DatetimeIndex:
    """(n_bars,) UTC bar times: BARS_PER_DAY 15-minute bars from SESSION_OPEN on each weekday from START.

    No weekend bars, so a year of timestamps holds ~BARS_PER_YEAR bars, the frequency the market states.
    pandas' timestamps end in 2262, which caps a series at ~1.6M bars.
    """
    days = pd.bdate_range(START, periods=-(-n_bars // BARS_PER_DAY))  # Monday..Friday at 00:00 UTC
    bar_offsets = SESSION_OPEN + pd.to_timedelta(np.arange(BARS_PER_DAY) * BAR_MINUTES, unit="min")  # (26,)
    stamps = days.repeat(BARS_PER_DAY) + np.tile(bar_offsets, len(days))  # (days * 26,)
    return pd.DatetimeIndex(stamps[:n_bars], name="timestamp")


def transition_matrix() -> np.ndarray:
    """(3, 3) per-bar regime transition probabilities implied by MEAN_DURATION and NEXT_REGIME."""
    leave = 1.0 / MEAN_DURATION
    return np.diag(1.0 - leave) + leave[:, None] * NEXT_REGIME


def _generate_instrument(
    rng: np.random.Generator, n_bars: int, index: pd.DatetimeIndex, drift_in_vols: float, kappa: np.ndarray
):
    """One instrument's bars and hidden state; drift_in_vols = |mu| / base_vol, kappa (3,) the scaled reversion."""
    base_vol = rng.uniform(0.003, 0.008)  # per-bar volatility scale of this instrument
    regime, drift = _regime_path(rng, n_bars, drift_in_vols * base_vol)  # (T,) int8, (T,) float64
    shocks = rng.standard_normal(n_bars)  # z_t
    sigma = base_vol * VOL_MULTIPLIER[regime] * np.exp(0.5 * _egarch_log_variance(shocks))
    # e_t = (1 - lam)(1 - kappa_t) e_{t-1} + (1 - lam)(mu_t + sigma_t z_t), e_0 = 0
    keep = 1.0 - EMA_RATE
    innovation = keep * (drift + sigma * shocks)
    innovation[0] = 0.0
    deviation = linear_recurrence(keep * (1.0 - kappa[regime]), innovation)
    log_return = np.empty(n_bars)
    log_return[0] = 0.0
    log_return[1:] = deviation[1:] / keep - deviation[:-1]  # r_t = e_t / (1 - lam) - e_{t-1}
    close = np.exp(np.log(rng.uniform(20.0, 200.0)) + np.cumsum(log_return))
    frame = _bars_from_close(rng, close, log_return, sigma, base_vol, index)
    return frame, regime, drift, deviation


def _regime_path(rng: np.random.Generator, n_bars: int, drift_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Episodes of geometric length; a trending episode carries a constant drift of +-drift_size (log/bar)."""
    regime = np.empty(n_bars, dtype=np.int8)
    drift = np.zeros(n_bars)
    state, start = int(rng.integers(3)), 0
    while start < n_bars:
        stop = min(n_bars, start + int(rng.geometric(1.0 / MEAN_DURATION[state])))
        regime[start:stop] = state
        if state == TRENDING:
            drift[start:stop] = rng.choice((-1.0, 1.0)) * drift_size
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


def _oracle_coefficients(horizon: int, kappa: np.ndarray = MEAN_REVERSION) -> np.ndarray:
    """(3, 2): E[x_{t+h} - x_t | s_t = i] = coef[i, 0] * mu_t + coef[i, 1] * e_t (exact for this process).

    Per-regime moments q[j] = E[(mu, e, c) * 1{s = j}] as linear maps of (mu_t, e_t), shape (3 regimes, 3, 2),
    pushed through one bar at a time: s' ~ P[s], mu' = mu if s = s' = trending else (fresh or 0, mean 0),
    c' = c + mu' - kappa[s'] e,  e' = (1 - lam)(mu' + (1 - kappa[s']) e). `kappa` (3,) must be the generator's.
    """
    transitions = transition_matrix()
    keep = 1.0 - EMA_RATE
    coefficients = np.zeros((3, 2))
    for start in range(3):
        moments = np.zeros((3, 3, 2))  # (regime j, state component [mu, e, c], initial [mu_t, e_t])
        moments[start, 0, 0] = moments[start, 1, 1] = 1.0
        for _ in range(horizon):
            moments = _propagate(moments, transitions, keep, kappa)
        coefficients[start] = moments[:, 2, :].sum(axis=0)
    return coefficients


def _propagate(moments: np.ndarray, transitions: np.ndarray, keep: float, kappa: np.ndarray) -> np.ndarray:
    following = np.zeros_like(moments)
    for i in range(3):
        for j in range(3):
            mu, deviation, cumulative = moments[i]  # each (2,)
            kept_drift = mu if i == j == TRENDING else np.zeros_like(mu)
            step = np.stack([
                kept_drift,
                keep * (kept_drift + (1.0 - kappa[j]) * deviation),
                cumulative + kept_drift - kappa[j] * deviation,
            ])
            following[j] += transitions[i, j] * step
    return following


def _expected_log_return(
    coefficients: np.ndarray, regime: np.ndarray, drift: np.ndarray, deviation: np.ndarray, horizon: int
) -> np.ndarray:
    expected = coefficients[regime, 0] * drift + coefficients[regime, 1] * deviation  # (T,)
    expected[max(0, regime.shape[0] - horizon):] = np.nan
    return expected
