"""The OpenAI (and Fireworks inference) API: completions, chat completions, embeddings, tokenize and models."""
