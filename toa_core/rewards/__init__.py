"""Reward models: in-process HF classifiers, vLLM pooling servers over HTTP, an LLM yes/no judge, plug-ins,
and the batcher that gathers concurrent scoring calls from many trees into one batch."""
