"""picograd.nn: torch.nn's modules, initializers and functional API over picogradd.

    import picograd as pg
    model = pg.nn.Sequential(pg.nn.Linear(64, 128), pg.nn.ReLU(), pg.nn.Linear(128, 10))
    loss = pg.nn.CrossEntropyLoss()(model(x), y)

- ``Module`` and ``Parameter`` (``modules.py``): parameters(), named_parameters(),
  state_dict() / load_state_dict() with torch's key names, train() / eval(), zero_grad().
- Layers: Linear Conv2d ReLU GELU SiLU Sigmoid Tanh Softmax LogSoftmax Sequential ModuleList
  ModuleDict Identity Flatten MaxPool2d AvgPool2d Dropout LayerNorm BatchNorm1d BatchNorm2d
  Embedding CrossEntropyLoss MSELoss, with torch's arguments, defaults and initializers.
- ``pg.nn.init`` (kaiming_uniform_, xavier_uniform_, normal_, ...), ``pg.nn.utils``
  (clip_grad_norm_), ``pg.nn.functional`` (F.relu, F.conv2d, F.cross_entropy, ...).
"""

from . import functional, init, utils
from .modules import *  # noqa: F401,F403
from .modules import __all__ as _modules_all

__all__ = ["functional", "init", "utils"] + _modules_all
