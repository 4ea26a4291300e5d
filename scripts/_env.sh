# Sourced by scripts/demo and scripts/test: finds or builds the Python environment.
#
# The environment lives outside the clone, keyed by the hash of pyproject.toml, so
# a second clone (or CI) reuses it instead of reinstalling torch. VISIONQ_VENV
# overrides the location; VISIONQ_PYTHON the interpreter used to create it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${VISIONQ_PYTHON:-python3}"
key="$(sha256sum "$repo/pyproject.toml" | cut -c1-16)"
venv="${VISIONQ_VENV:-$HOME/.cache/visionq/venvs/$key}"

if [ ! -f "$venv/.installed" ]; then
  echo "visionq: creating the environment in $venv (once per pyproject.toml; torch is large)" >&2
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip "setuptools>=77" wheel
  "$venv/bin/python" -m pip install --quiet -e "$repo[dev]"
  touch "$venv/.installed"
fi
# The environment may have been built from another clone: point it at this one.
"$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$repo" >/dev/null
export PATH="$venv/bin:$PATH"
cd "$repo"
