"""`python -m hoiclip_jax.predict ...`: predictions on your own images
(hoiclip_jax/eval/predict_cli.py)."""
from hoiclip_jax.lib import host_memory

if __name__ == "__main__":
    # First, before jax is imported: glibc reads its malloc tunables at process start.
    host_memory.reexec_with_malloc_tunables()
    from absl import app

    from hoiclip_jax.eval import predict_cli

    predict_cli.define_flags()
    app.run(predict_cli.main)
