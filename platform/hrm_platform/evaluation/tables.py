"""The figures of a backtest record as text, shared by the single-split and the walk-forward reports: the
terminal table, the Markdown strategy table with intervals and ICs, the intervals in words, and the ACT curve.
"""

from __future__ import annotations

from typing import Any


def strategy_lines(portfolio: dict[str, dict], ic: dict[str, dict], confidence: float) -> list[str]:
    """The terminal table: per strategy total return, Sharpe with its interval, drawdown, turnover, IC."""
    lines = [f"  {'strategy':<20}{'total':>9}{'sharpe':>8}  {f'{confidence:.0%} CI':<17}{'max dd':>8}"
             f"{'turnover':>10}{'IC':>8}"]
    for name, values in portfolio.items():
        low, high = values["sharpe_ci"]
        ic_text = f"{ic[name]['pearson']['estimate']:>+8.3f}" if name in ic else f"{'':>8}"
        lines.append(f"  {name:<20}{values['total_return']:>+9.2%}{values['sharpe']:>8.2f}  "
                     f"{f'[{low:+.2f}, {high:+.2f}]':<17}{values['max_drawdown']:>8.2%}{values['turnover']:>10.3f}"
                     + ic_text)
    return lines


def strategy_table_markdown(portfolio: dict[str, dict], ic: dict[str, dict], confidence: float) -> str:
    """Per strategy: returns, Sharpe with its interval, the model's paired Sharpe lead, risk, trading, IC."""
    level = f"{confidence:.0%}"
    header = (f"| strategy | total return | annualised | Sharpe | Sharpe {level} CI | "
              f"model's Sharpe lead ({level} CI) | "
              "Sortino | max drawdown | hit rate | turnover | exposure | IC | rank IC |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [
        f"| {'**model**' if name == 'model' else name.replace('_', ' ')} | {m['total_return']:+.2%} | "
        f"{m['annualised_return']:+.1%} | {m['sharpe']:.2f} | {m['sharpe_ci'][0]:+.2f} to {m['sharpe_ci'][1]:+.2f} | "
        f"{_lead_text(m.get('sharpe_lead_of_model'))} | {m['sortino']:.2f} | {m['max_drawdown']:.2%} | "
        f"{m['hit_rate']:.1%} | {m['turnover']:.3f} | {m['exposure']:.2f} | {_ic_text(ic.get(name), 'pearson')} | "
        f"{_ic_text(ic.get(name), 'rank')} |"
        for name, m in portfolio.items()
    ]
    return "\n".join([header, *rows])


def _lead_text(lead: dict | None) -> str:
    if lead is None:
        return ""
    return f"{lead['estimate']:+.2f} ({lead['low']:+.2f} to {lead['high']:+.2f})"


def _ic_text(ic: dict | None, kind: str) -> str:
    if ic is None:
        return ""
    return f"{ic[kind]['estimate']:+.3f} (t {ic[kind]['t_stat']:+.1f})"


def act_markdown(act: dict[str, Any] | None) -> str:
    """What the model's segments earn: accuracy and IC after each (every window run to M), and the verdict.
    The rows model_1_segment and model_all_segments of the strategy table trade those two stopping rules."""
    if act is None:
        return ""
    rows = "\n".join(
        f"| {point['segment']} | {point['accuracy']:.3f} | {point['ic']:+.3f} |" for point in act["per_segment"]
    )
    return ("| after segment | accuracy | IC |\n|---:|---:|---:|\n" + rows + "\n\n" + act["verdict"] +
            " In the strategy table, `model 1 segment` and `model all segments` are the same weights stopped after "
            "one segment and run to all of them.")


def uncertainty_paragraph(portfolio: dict[str, dict], ic: dict[str, dict], bootstrap: dict[str, float]) -> str:
    """The intervals in words: the model's Sharpe, its lead over each baseline, and its IC."""
    from hrm_platform.evaluation.uncertainty import Interval, interval_words

    level = bootstrap["confidence"]
    model = portfolio["model"]
    sentences = [interval_words("Model Sharpe", Interval(model["sharpe"], *model["sharpe_ci"], level)) + "."]
    for name, row in portfolio.items():
        lead = row.get("sharpe_lead_of_model")
        if lead is not None and name != "flat":
            interval = Interval(lead["estimate"], lead["low"], lead["high"], lead["level"])
            sentences.append(interval_words(f"Its Sharpe lead over {name.replace('_', ' ')}", interval) + ".")
    if "model" in ic:
        pearson = ic["model"]["pearson"]
        interval = Interval(pearson["estimate"], pearson["low"], pearson["high"], pearson["level"])
        sentences.append(interval_words("Model IC", interval, decimals=3) + f" (t {pearson['t_stat']:+.1f}).")
    return (" ".join(sentences) + f" Intervals: stationary block bootstrap, {bootstrap['resamples']} resamples, "
            f"mean block {bootstrap['block_length']:.0f} bars; the Sharpe lead is paired (the same resampled bars).")
