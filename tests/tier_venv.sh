# Sourced by a test tier's setup_venv.sh with VENV set: exits when $VENV is newer than pyproject.toml and the
# calling script, else creates it with CPU torch, this project with its test tools, and sie-sdk. The caller
# installs its own packages, then runs `tier_venv_done`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STAMP=$VENV/.installed-tier
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt "$0" ]; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -e '.[test]' ${TIER_PINS:-}
"$VENV/bin/pip" install -q --ignore-requires-python sie-sdk

tier_venv_done() {
  touch "$STAMP"
}
