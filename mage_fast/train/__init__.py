"""Training: typed configs, DeepSpeed glue, checkpoints, and the `deepspeed --module` entry."""
