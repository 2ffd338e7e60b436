"""Model builders and training (tf-keras)."""
