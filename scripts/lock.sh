#!/usr/bin/env bash
# Regenerates requirements/lock.txt from requirements/base.in in a scratch venv.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
python3.11 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --upgrade pip
"$tmp/venv/bin/pip" install -q -r requirements/base.in
{
  echo "# Every package of step 1, pinned (pip freeze after installing requirements/base.in)."
  echo "# Regenerate with: scripts/lock.sh"
  "$tmp/venv/bin/pip" freeze --exclude-editable
} > requirements/lock.txt
rm -rf "$tmp"
echo "wrote requirements/lock.txt"
