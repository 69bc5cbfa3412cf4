"""`python -m hoiclip_jax.evaluate ...`: the evaluation entry point (hoiclip_jax/eval/main.py)."""
from hoiclip_jax.lib import host_memory

if __name__ == "__main__":
    # First, before jax is imported: glibc reads its malloc tunables at process start.
    host_memory.reexec_with_malloc_tunables()
    from absl import app

    from hoiclip_jax.eval import main

    main.define_flags()
    app.run(main.main)
