"""dogo: Distill on the Go, a teaching and reproduction kit for online mutual similarity distillation
in self-supervised learning (SimCLR, SimSiam)."""

__version__ = "0.1.0"

from .config import Config, load_config  # noqa: E402
from .errors import CheckpointError, ConfigError, DataError, DogoError, NonFiniteLossError  # noqa: E402
from .losses import nt_xent, similarity_distill, simsiam_loss  # noqa: E402

__all__ = [
    "Config", "load_config", "nt_xent", "simsiam_loss", "similarity_distill",
    "DogoError", "ConfigError", "DataError", "CheckpointError", "NonFiniteLossError",
]
