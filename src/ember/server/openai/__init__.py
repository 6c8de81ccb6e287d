"""The OpenAI API (which Fireworks' inference API follows): completions, chat completions, embeddings,
tokenize and models."""
