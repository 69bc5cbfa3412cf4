"""`python -m hoiclip_jax.predict ...`: predictions on your own images
(hoiclip_jax/eval/predict_cli.py)."""
from absl import app

from hoiclip_jax.eval import predict_cli

if __name__ == "__main__":
    predict_cli.define_flags()
    app.run(predict_cli.main)
