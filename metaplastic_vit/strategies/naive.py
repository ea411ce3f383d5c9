"""Fine-tuning: no protection besides what meta gives (meta 0: plain fine-tuning, the lower bound)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..data import TaskSet
from ..loop.hooks import Strategy
from . import StrategyConfig, register_strategy


@register_strategy("naive")
@dataclass
class NaiveConfig(StrategyConfig):
    """strategy=naive: no protection besides metaplasticity."""

    _target_: str = "metaplastic_vit.strategies.naive.Naive"
    _partial_: bool = True


class Naive(Strategy):
    """No protection besides what meta gives."""

    name = "naive"

    def __init__(self, model: nn.Module, data: TaskSet) -> None:
        pass
