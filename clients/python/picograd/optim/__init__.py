"""picograd.optim: torch.optim's SGD, Adam and AdamW (torch 1.13's formulas), their
state_dict()/load_state_dict() in torch's layout, and lr_scheduler.StepLR /
CosineAnnealingLR. ``opt.step()`` sends the whole training step as one `run`
(optimizer.py explains how)."""

from . import lr_scheduler
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler"]
