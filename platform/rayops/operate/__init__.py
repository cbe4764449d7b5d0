"""The operate loop: watch served traffic, retrain when it calls for it, prove the new
model (gate, labelled window, shadow), promote it and roll it back if it misbehaves."""

from rayops.operate.operator import Operator, operate
from rayops.operate.state import CycleState, OperateError

__all__ = ["CycleState", "OperateError", "Operator", "operate"]
