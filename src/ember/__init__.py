"""ember: self-hosted LLM inference and fine-tuning with a Fireworks/OpenAI-compatible API."""

__version__ = "0.1.0"
