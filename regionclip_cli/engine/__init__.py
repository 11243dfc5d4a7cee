"""Training machinery shared by every training stage: typed recipes, the loop, checkpoints, DDP."""
