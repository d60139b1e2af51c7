"""The decision vocabulary is defined once and every layer reads it."""

from __future__ import annotations

import typing

import numpy as np

from hrm_platform.actions import ACTIONS, BUY, HOLD, N_ACTIONS, SELL, target_positions
from hrm_platform.config import ModelConfig
from hrm_platform.model.hrm import HRM
from hrm_platform.serving.schemas import Action


def test_class_ids_follow_the_names():
    assert [ACTIONS[i] for i in (HOLD, BUY, SELL)] == ["hold", "buy", "sell"]


def test_target_position_is_direction_times_clipped_quantity():
    positions = target_positions(np.array([BUY, SELL, HOLD, BUY]), np.array([0.5, 0.25, 0.9, 1.7]))
    assert positions.tolist() == [0.5, -0.25, 0.0, 1.0]


def test_the_model_head_and_the_http_schema_use_the_vocabulary():
    model = HRM(ModelConfig(d_model=8, n_heads=2), n_features=3, window=4)
    assert model.heads.action.out_features == N_ACTIONS
    assert typing.get_args(Action) == ACTIONS
