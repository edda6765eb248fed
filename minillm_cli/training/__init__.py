"""Training: the engine, rollouts, checkpoints, processes and ZeRO, LoRA, schedules, numerics, the teacher cache."""
