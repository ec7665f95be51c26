"""Chat-model backends (OpenAI-compatible HTTP, in-process transformers), model assets and the agent factory."""
