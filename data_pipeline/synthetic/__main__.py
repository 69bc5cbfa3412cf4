"""`python -m data_pipeline.synthetic --out DIR --seed 0 --num-train N --num-test N`."""
from data_pipeline.synthetic import generate

if __name__ == "__main__":
    generate.main()
