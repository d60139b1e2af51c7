"""How predictable the default synthetic market is: baselines, the oracle and return statistics per seed.

For each seed, the default market (DataConfig defaults: 4 instruments x 6,000 bars, horizon 8) is backtested
over its whole series with the evaluation's own functions (1 bp per unit turnover, momentum lookback 20,
equal-weight portfolio, annualised with the market's stated bars per year):

    .venv/bin/python -m benchmarks.market_calibration                       # seeds 0..9
    .venv/bin/python -m benchmarks.market_calibration --seeds 20 --signal-strength 2

Columns: Sharpe of buy and hold, momentum and the oracle's sign strategy; the oracle IC (Pearson correlation
of its expected h-bar log return with the realised one, pooled over instruments); lag-1 autocorrelation of
one-bar log returns and of their absolute values (mean over instruments). Prints a Markdown table, the mean
row and whether each target holds; writes benchmarks/results/market_calibration.json; exits 1 if one misses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from hrm_platform.config import DataConfig
from hrm_platform.data.market import SyntheticMarket, generate_market
from hrm_platform.evaluation.backtest import backtest_instrument, equal_weight_portfolio, oracle_positions
from hrm_platform.evaluation.metrics import sharpe_ratio

RESULTS = Path(__file__).resolve().parent / "results" / "market_calibration.json"
COST_BPS = 1.0
MOMENTUM_LOOKBACK = 20
COLUMNS = ("buy_and_hold_sharpe", "momentum_sharpe", "oracle_sharpe", "oracle_ic", "return_autocorr", "abs_autocorr")
HEADERS = ("B&H Sharpe", "momentum Sharpe", "oracle Sharpe", "oracle IC", "r lag-1 ac", "abs(r) lag-1 ac")
# Targets on the mean over seeds (issue 14, point 5): column -> (low, high); the autocorrelation of r is bounded
# in absolute value.
TARGETS = {
    "oracle_ic": (0.08, 0.20),
    "oracle_sharpe": (2.0, 5.0),
    "buy_and_hold_sharpe": (-0.5, 1.5),
    "return_autocorr": (-0.05, 0.05),
    "abs_autocorr": (0.1, 1.0),
}


def portfolio_sharpes(market: SyntheticMarket) -> dict[str, float]:
    """Whole-series Sharpe of buy and hold, momentum and oracle on the equal-weight portfolio."""
    instruments = []
    for symbol, frame in market.bars.items():
        end_bars = np.arange(len(frame) - 1)  # every bar with a next bar to be held over
        oracle = oracle_positions(market.expected_log_return[symbol], end_bars, COST_BPS)
        instruments.append(backtest_instrument(
            symbol, frame, end_bars, np.zeros(len(end_bars)),
            cost_bps=COST_BPS, momentum_lookback=MOMENTUM_LOOKBACK, oracle=oracle,
        ))
    portfolio = equal_weight_portfolio(instruments)
    names = ("buy_and_hold", "momentum", "oracle")
    return {f"{name}_sharpe": sharpe_ratio(portfolio.runs[name].returns, market.bars_per_year) for name in names}


def oracle_ic(market: SyntheticMarket) -> float:
    """Pearson correlation of E[log(c[t+h]/c[t])] with the realised value, pooled over instruments' bars."""
    expected, realised = [], []
    for symbol, frame in market.bars.items():
        log_close = np.log(frame["close"].to_numpy())
        expected.append(market.expected_log_return[symbol][: -market.horizon])  # (T - h,)
        realised.append(log_close[market.horizon :] - log_close[: -market.horizon])  # (T - h,)
    return float(np.corrcoef(np.concatenate(expected), np.concatenate(realised))[0, 1])


def lag1_autocorrelations(market: SyntheticMarket) -> dict[str, float]:
    """Mean over instruments of the lag-1 autocorrelation of one-bar log returns r and of |r|."""
    of_returns, of_sizes = [], []
    for frame in market.bars.values():
        returns = np.diff(np.log(frame["close"].to_numpy()))  # (T - 1,)
        of_returns.append(np.corrcoef(returns[1:], returns[:-1])[0, 1])
        of_sizes.append(np.corrcoef(np.abs(returns[1:]), np.abs(returns[:-1]))[0, 1])
    return {"return_autocorr": float(np.mean(of_returns)), "abs_autocorr": float(np.mean(of_sizes))}


def measure(seed: int, signal_strength: float) -> dict[str, float]:
    config = DataConfig(seed=seed, signal_strength=signal_strength)  # defaults otherwise; validates the strength
    market = generate_market(
        config.n_instruments, config.n_bars, config.seed, config.horizon, signal_strength=config.signal_strength
    )
    return {**portfolio_sharpes(market), "oracle_ic": oracle_ic(market), **lag1_autocorrelations(market)}


def target_checks(mean_row: dict[str, float]) -> dict[str, dict]:
    return {
        name: {"mean": mean_row[name], "low": low, "high": high, "holds": bool(low <= mean_row[name] <= high)}
        for name, (low, high) in TARGETS.items()
    }


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| seed | " + " | ".join(HEADERS) + " |", "|---" * (len(HEADERS) + 1) + "|"]
    for label, row in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[name]:.3f}" for name in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0 .. N-1")
    parser.add_argument("--signal-strength", type=float, default=DataConfig().signal_strength)
    args = parser.parse_args()
    per_seed = {str(seed): measure(seed, args.signal_strength) for seed in range(args.seeds)}
    mean_row = {name: float(np.mean([row[name] for row in per_seed.values()])) for name in COLUMNS}
    checks = target_checks(mean_row)
    print(f"default market, signal_strength {args.signal_strength}, seeds 0..{args.seeds - 1}\n")
    print(markdown_table({**per_seed, "**mean**": mean_row}))
    print()
    for name, check in checks.items():
        verdict = "holds" if check["holds"] else "MISSED"
        print(f"{name:<20} mean {check['mean']:+.3f}  target [{check['low']}, {check['high']}]  {verdict}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    summary = {"signal_strength": args.signal_strength, "cost_bps": COST_BPS, "momentum_lookback": MOMENTUM_LOOKBACK,
               "per_seed": per_seed, "mean": mean_row, "targets": checks}
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    if not all(check["holds"] for check in checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
