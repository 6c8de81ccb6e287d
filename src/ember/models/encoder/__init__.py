"""BERT-family encoders (all-MiniLM, BGE, GTE, E5) for embeddings and reranking, loaded from a Hugging Face
folder with its sentence-transformers pooling configuration."""
