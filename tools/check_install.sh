#!/usr/bin/env bash
# Installs hoiclip-jax NON-editably into a fresh venv and uses it from outside the repository:
# `import hoiclip_jax`, a config file loaded by path, and `load_checkpoint` on a run folder.
#
#   tools/check_install.sh [RUN_DIR]    # default runs/demo (made by `make demo`)
#
# Needs the package registries (pip installs the pinned requirements, about a minute).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
run_dir=$(cd "${1:-$repo/runs/demo}" && pwd)
interp=$("$repo/tools/find_python.sh")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fresh venv in $work/venv ($($interp --version))"
"$interp" -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet -r "$repo/requirements.txt"
# Built from a copy, so that no build output lands in the checkout.
cp -r "$repo" "$work/src"
rm -rf "$work/src/.venv" "$work/src/runs" "$work/src/data"
"$py" -m pip install --quiet --no-deps "$work/src"
cd "$work"  # outside the repository: only the installed package can be imported
"$py" - "$run_dir" "$repo/configs/demo.py" <<'PY'
import os, sys
import hoiclip_jax
assert "site-packages" in hoiclip_jax.__file__, hoiclip_jax.__file__
from hoiclip_jax.lib import config_files
config_files.load_config(sys.argv[2])  # a config file by path, not as a `configs` package
config, params = hoiclip_jax.load_checkpoint(sys.argv[1])
import jax
count = sum(x.size for x in jax.tree.leaves(params))
print(f"installed at {os.path.dirname(hoiclip_jax.__file__)}")
print(f"load_checkpoint({sys.argv[1]}): {config.dataset.name} model, {count:,} parameters")
PY
echo "check_install: ok"
