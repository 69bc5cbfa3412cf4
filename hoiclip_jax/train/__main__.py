"""`python -m hoiclip_jax.train --config configs/hico5p.py --workdir DIR`."""
from absl import app

from hoiclip_jax.train import main

if __name__ == "__main__":
    main.define_flags()
    app.run(main.main)
