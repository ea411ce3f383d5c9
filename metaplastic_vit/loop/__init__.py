"""The continual-learning loop: the trainer, its evaluator and checkpointer, and the two plugin protocols."""
