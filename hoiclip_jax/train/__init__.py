"""Training: Hungarian matching, set losses, optimizer groups, the sharded step, the train
state and the `python -m hoiclip_jax.train` entry point (`main`)."""
