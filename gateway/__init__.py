"""llm-gateway: the HTTP layer (OpenAI API, backends, metrics) in front of the :mod:`router` library."""

__version__ = "0.1.0"
