"""Training and finetuning: one fit loop, the trainer, stopping and resuming, progress."""
