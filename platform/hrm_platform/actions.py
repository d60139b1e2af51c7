"""The decision vocabulary: the actions, their class ids and directions, and the target-position rule.

One definition for every layer that names an action or turns one into a position: the data's labels, the
model's head width, the backtest, the engine's answers and the HTTP schema.

    target_positions(np.array([BUY, SELL, HOLD]), np.array([0.5, 0.25, 0.9]))   # [0.5, -0.25, 0.0]
    signed_score(np.array([[0.2, 0.7, 0.1]]))                                   # [0.6]
"""

from __future__ import annotations

import numpy as np

ACTIONS: tuple[str, ...] = ("hold", "buy", "sell")  # class ids 0, 1, 2
HOLD, BUY, SELL = 0, 1, 2
N_ACTIONS = len(ACTIONS)
DIRECTIONS = np.array([0.0, 1.0, -1.0])  # (N_ACTIONS,) sign of the target position: flat, long, short


def target_positions(actions: np.ndarray, quantity: np.ndarray) -> np.ndarray:
    """(N,) signed target positions: the action's direction x its quantity clipped to [0, 1] (hold is flat)."""
    return DIRECTIONS[np.asarray(actions)] * np.clip(np.asarray(quantity, dtype=np.float64), 0.0, 1.0)


def signed_score(probabilities: np.ndarray) -> np.ndarray:
    """(N, 3) action probabilities -> (N,) p(buy) - p(sell) in [-1, 1]: the expected direction, for the IC."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return probabilities[:, BUY] - probabilities[:, SELL]
