"""Files, datasets and fine-tuning jobs, in OpenAI's and Fireworks' shapes, over one tuning runtime."""
