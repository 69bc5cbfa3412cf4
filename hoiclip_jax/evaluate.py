"""`python -m hoiclip_jax.evaluate ...`: the evaluation entry point (hoiclip_jax/eval/main.py)."""
from absl import app

from hoiclip_jax.eval import main

if __name__ == "__main__":
    main.define_flags()
    app.run(main.main)
