"""What two or more downstream commands share: encoders and embeddings, tasks and breast tables."""
