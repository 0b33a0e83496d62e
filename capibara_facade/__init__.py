"""capibara-facade: an OpenAI-compatible gateway with model aliasing and byte-faithful streaming."""

from .config import Config, ConfigError, load_config
from .http.app import create_app

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "__version__", "create_app", "load_config"]
