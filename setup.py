"""Installs the two packages of hoiclip-jax: the library and the data pipeline."""
from setuptools import find_packages, setup

setup(
    name="hoiclip-jax",
    version="0.1.0",
    description="HOICLIP human-object interaction detection in JAX/Flax",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.12",
    packages=find_packages(include=["hoiclip_jax", "hoiclip_jax.*", "data_pipeline",
                                    "data_pipeline.*"]),
    package_data={"data_pipeline": ["tables/*.json"]},
    install_requires=[
        "jax>=0.11.2", "jaxlib>=0.11.2", "flax", "optax", "orbax-checkpoint", "numpy", "scipy",
        "ml_collections", "tensorflow-datasets", "importlib_resources", "grain", "array-record",
        "pillow", "tqdm", "tensorboardX", "transformers", "safetensors",
    ],
)
