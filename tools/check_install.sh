#!/usr/bin/env bash
# Installs hoiclip-jax NON-editably into a fresh venv and uses it without the checkout:
# `import hoiclip_jax` and a config file loaded by path from a folder outside the repository,
# then `load_checkpoint` on a run folder with `python -I` (only the installed package can be
# imported) from the folder the run was started in, since a run's config.json keeps the data
# paths it was given (the demo's class table is data/synthetic/annotations/classes.json).
#
#   tools/check_install.sh [RUN_DIR [LAUNCH_DIR]]   # default runs/demo, started in the repo
#
# Needs the package registries (pip installs the pinned requirements, about a minute).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
run_dir=$(cd "${1:-$repo/runs/demo}" && pwd)
launch_dir=$(cd "${2:-$repo}" && pwd)
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
"$py" - "$repo/configs/demo.py" <<'PY'
import sys
import hoiclip_jax
assert "site-packages" in hoiclip_jax.__file__, hoiclip_jax.__file__
from hoiclip_jax.lib import config_files
config_files.load_config(sys.argv[1])  # a config file by path, not as a `configs` package
print(f"import hoiclip_jax: {hoiclip_jax.__file__}")
PY
cd "$launch_dir"
"$py" -I - "$run_dir" <<'PY'
import sys
import hoiclip_jax
assert "site-packages" in hoiclip_jax.__file__, hoiclip_jax.__file__
import jax
config, params = hoiclip_jax.load_checkpoint(sys.argv[1])
count = sum(x.size for x in jax.tree.leaves(params))
print(f"load_checkpoint({sys.argv[1]}): {config.dataset.name} model, {count:,} parameters")
PY
echo "check_install: ok"
