"""Infrastructure shared by training and evaluation, with no HOI knowledge: the device mesh
(`sharding`), orbax checkpoints, the run log, command-line plumbing, config files, box ops."""
