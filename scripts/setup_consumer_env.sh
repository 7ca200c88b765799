#!/usr/bin/env bash
# Create the environment in which open_clip's own trainer (open_clip_train.main) reads our
# output. open_clip_train pins webdataset<=0.2.86 while vlm_aug's main venv has webdataset 1.x,
# so this is a second, tiny venv that holds only webdataset==0.2.86 and sees every other
# package (torch, open_clip, vlm_aug, ...) through a .pth file pointing at the main venv.
# Its own site-packages comes first on sys.path, so `import webdataset` gets 0.2.86.
#
# Usage: scripts/setup_consumer_env.sh [MAIN_VENV] [CONSUMER_ENV]
#   defaults: MAIN_VENV=.venv  CONSUMER_ENV=.venv/consumer (inside .venv, so git ignores it)
# Then:   .venv/consumer/bin/python -m open_clip_train.main --dataset-type webdataset ...
# Idempotent: a second call with a ready environment does nothing. Needs the package index once.
set -euo pipefail

cd "$(dirname "$0")/.."
MAIN_VENV="${1:-.venv}"
ENV_DIR="${2:-$MAIN_VENV/consumer}"
WDS_VERSION="0.2.86"
PY="$MAIN_VENV/bin/python"

if [ ! -x "$PY" ]; then
    echo "error: $PY not found; create the main venv first (python -m venv .venv && .venv/bin/pip install -e '.[test]')" >&2
    exit 2
fi
if [ -x "$ENV_DIR/bin/python" ] && \
   [ "$("$ENV_DIR/bin/python" -c 'import webdataset, importlib.metadata as m; print(m.version("webdataset"))' 2>/dev/null)" = "$WDS_VERSION" ]; then
    echo "$ENV_DIR ready (webdataset $WDS_VERSION)"
    exit 0
fi

"$PY" -m venv --without-pip --clear "$ENV_DIR"
MAIN_SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
MAIN_SITE="$(cd "$MAIN_SITE" && pwd)"
ENV_SITE="$("$ENV_DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$ENV_SITE"
# addsitedir (not a bare path line) so the main venv's own .pth files (the editable vlm_aug) run too.
echo "import site; site.addsitedir('$MAIN_SITE')" > "$ENV_SITE/zz_main_venv.pth"
"$PY" -m pip install --quiet --no-deps --target "$ENV_SITE" "webdataset==$WDS_VERSION"
"$ENV_DIR/bin/python" - <<PYEOF
import importlib.metadata as m
import open_clip_train.main, vlm_aug
assert m.version("webdataset") == "$WDS_VERSION", m.version("webdataset")
print("$ENV_DIR ready (webdataset", m.version("webdataset") + ")")
PYEOF
