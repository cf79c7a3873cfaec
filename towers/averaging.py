"""An exponential moving average of a model's weights along training (``ema_decay``).

With a constant learning rate the last step's weights wander around a minimum by as much as
the steps are long; their average over the last few hundred steps sits nearer it. Training
keeps the average beside the weights it trains, validates the average, and the model it
returns holds the average (``fit``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class WeightAverage:
    """The moving average of ``model``'s parameters: after each optimizer step ``update``
    moves it ``1 - decay`` of the way towards the weights (``torch.optim.swa_utils``' EMA
    rule). It starts at the weights it is made with (a continued model: its parent's), and
    early on it follows the weights closer: after ``n`` updates its decay is at most
    ``(1 + n) / (10 + n)`` (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``),
    so that a training of a few dozen steps is not held back at where it started.
    leave_out: parameters not averaged (they keep their last step's values)."""

    def __init__(self, model: torch.nn.Module, decay: float, leave_out: list[torch.nn.Parameter] = ()) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"the average's decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        left_out = {id(p) for p in leave_out}
        self.parameters = [p for p in model.parameters() if id(p) not in left_out]
        self.averaged = [p.detach().clone() for p in self.parameters]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.averaged, [p.detach() for p in self.parameters], 1.0 - self.current_decay())
        self.updates += 1

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """The model's parameters become the average (at the end of training)."""
        for parameter, average in zip(self.parameters, self.averaged):
            parameter.copy_(average)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the average inside the block (to validate it, or copy it), its own
        weights again after."""
        with torch.no_grad():
            trained = [p.detach().clone() for p in self.parameters]
            self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, weights in zip(self.parameters, trained):
                    parameter.copy_(weights)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "averaged": [average.detach().cpu() for average in self.averaged]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        saved = state["averaged"]
        if len(saved) != len(self.averaged) or any(s.shape != a.shape for s, a in zip(saved, self.averaged)):
            raise ValueError("the checkpoint's weight average does not match this model")
        for average, weights in zip(self.averaged, saved):
            average.copy_(weights)
        self.updates = int(state["updates"])
