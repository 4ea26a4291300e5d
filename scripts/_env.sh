# Sourced by scripts/demo and scripts/test: finds or builds the Python environment.
#
# The environment lives outside the clone, keyed by the hash of pyproject.toml, so
# a second clone (or CI) reuses it instead of reinstalling torch. VISIONQ_VENV
# overrides the location; VISIONQ_PYTHON the interpreter used to create it.
# It also leaves ./visionq in the clone: the CLI of that environment, runnable
# without activating anything.
#
# Clones share an environment (same pyproject.toml, or VISIONQ_VENV): its editable install
# points at the clone that built it, and each clone runs its own code by putting itself first
# on PYTHONPATH (here, and in its ./visionq). Reinstalling for each clone would switch the
# environment under every other clone, and break them once that clone is deleted.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"  # -P: the path Python resolves too
python="${VISIONQ_PYTHON:-python3}"
key="$(sha256sum "$repo/pyproject.toml" | cut -c1-16)"
venv="${VISIONQ_VENV:-$HOME/.cache/visionq/venvs/$key}"
# Quiet means quiet: errors only (no version nag, no root-user warning, no notes about
# the machine's package indexes), and no setuptools warnings from the editable build.
pip_install() {
  PIP_ROOT_USER_ACTION=ignore PYTHONWARNINGS=ignore "$venv/bin/python" -m pip -qq --disable-pip-version-check \
    install --no-warn-script-location "$@"
}

if [ ! -f "$venv/.installed" ]; then
  echo "visionq: creating the environment in $venv (once per pyproject.toml; torch is large)" >&2
  "$python" -m venv "$venv"
  pip_install --upgrade pip "setuptools>=77" wheel
  pip_install -e "$repo[dev]"
  touch "$venv/.installed"
fi
launcher="$repo/visionq"
if [ ! -x "$launcher" ] || ! grep -qF "PYTHONPATH=\"$repo\${PYTHONPATH" "$launcher" || ! grep -qF "$venv/bin/visionq" "$launcher"; then
  # Written aside (a name of this run's own: two scripts may start at once), then moved: a
  # shell may be running the launcher meanwhile.
  aside=$(mktemp "$launcher.new.XXXXXX")
  printf '#!/bin/sh\n# Written by scripts/_env.sh (not versioned): the visionq CLI of %s, running this clone\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s/bin/visionq" "$@"\n' \
    "$venv" "$repo" "$venv" > "$aside"
  chmod 755 "$aside"
  mv -f "$aside" "$launcher"
fi
export PATH="$venv/bin:$PATH"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo"
