"""capibara-facade: an OpenAI-compatible gateway with model aliasing and byte-faithful streaming."""

from .app import create_app
from .config import Config, ConfigError, load_config

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "__version__", "create_app", "load_config"]
