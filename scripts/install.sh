#!/usr/bin/env bash
# One-command install of the pinned environment into .venv (see README).
# Step 1 resolves requirements/lock.txt normally (every package pinned);
# step 2 adds the TFX packages whose declared requirements cannot be met on
# Python 3.11 with --no-deps; step 3 installs this project, editable.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
# The packages are installed by uv (requirements/installer.txt), which
# downloads and unpacks in parallel: about 20 s for steps 1 and 2 where pip
# takes 100 s or more (BENCHMARKS.md, "The README's two commands").
# INSTALLER=pip installs the same pins with pip (it reads pip.conf, e.g. a
# private index; uv reads UV_INDEX_URL). Neither byte-compiles here:
# compileall compiles every installed file on every core after step 2.
INSTALLER=${INSTALLER:-uv}
if [ "$INSTALLER" != uv ] && [ "$INSTALLER" != pip ]; then
  echo "[install] error: INSTALLER=$INSTALLER; use uv (the default) or pip" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  # The environment takes about 5 GB (a 3.8 GB venv, plus pip's downloads and
  # builds under TMPDIR); a full disk would otherwise end pip half-way with
  # "[Errno 28] No space left on device".
  NEED_MB=${INSTALL_NEED_MB:-6000}
  for dir in "$(dirname "$VENV")" "${TMPDIR:-/tmp}"; do
    free_mb=$(df -Pm "$dir" | awk 'NR == 2 {print $4}')
    echo "[install] $free_mb MB free on $(df -P "$dir" | awk 'NR == 2 {print $6}') ($dir)"
    if [ "$free_mb" -lt "$NEED_MB" ]; then
      echo "[install] error: about $NEED_MB MB are needed under $dir, $free_mb MB are free;" \
           "free some space (or set TMPDIR to a larger disk) and run make install again" >&2
      exit 1
    fi
  done
  echo "[install] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
if [ "$INSTALLER" = uv ]; then
  "${PIP[@]}" install -q -r requirements/installer.txt
  INSTALL=("$VENV/bin/uv" pip install -q --python "$VENV/bin/python")
else
  INSTALL=("${PIP[@]}" install -q --no-compile)
fi
echo "[install] step 1/3: pinned dependencies (requirements/lock.txt), with $INSTALLER"
"${INSTALL[@]}" -r requirements/lock.txt
echo "[install] step 2/3: TFX packages with --no-deps (requirements/no-deps.txt)"
"${INSTALL[@]}" --no-deps -r requirements/no-deps.txt
# TFDV 1.16.1 imports tfx_bsl.arrow.sql_util, gone from tfx-bsl 1.21.
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# uv hard-links files from its cache: replace, never write through a link.
cp --remove-destination scripts/compat/tfx_bsl_arrow_sql_util.py "$SITE/tfx_bsl/arrow/sql_util.py"
# As with pip's own compiling, a file that does not compile (none here) is
# no error: Python reports it if the file is ever imported.
"$VENV/bin/python" -m compileall -qq -j 0 "$SITE" \
  || echo "[install] note: some installed files did not byte-compile"
echo "[install] step 3/3: this project (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import tfx, tensorflow as tf, tensorflow_text, tensorflow_data_validation; print('[install] ok: tfx', tfx.__version__, 'tensorflow', tf.__version__)"
