"""shadowtap: the composition root. The CLI, config file loading and process start-up live here."""

__version__ = "0.1.0"
