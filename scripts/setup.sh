#!/usr/bin/env bash
# Create .venv and install vlm_aug into it (editable). `--test` adds the test tools;
# `--vllm` creates the serving-engine environment .venv-vllm instead (scripts/setup_vllm_env.sh).
# On Linux x86_64 with Python 3.11 this installs torch 2.14.1 + torchvision 0.29.1 first
# (a matching pair; torchvision needs its own torch build). Elsewhere pip picks torch.
# Override with TORCH_SPEC="torch==X torchvision==Y" or TORCH_SPEC=skip.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"
if [[ "${1:-}" == "--vllm" ]]; then  # the serving-engine environment .venv-vllm (scripts/setup_vllm_env.sh)
  exec bash scripts/setup_vllm_env.sh
fi
python="${PYTHON:-python3}"
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
pip=".venv/bin/python -m pip"
$pip install -q --upgrade pip >/dev/null
if [[ "${TORCH_SPEC:-}" != "skip" ]]; then
  spec="${TORCH_SPEC:-}"
  if [[ -z "$spec" && "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] && .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    spec="torch==2.14.1 torchvision==0.29.1"
  fi
  if [[ -n "$spec" ]] && ! .venv/bin/python -c "import torchvision" 2>/dev/null; then
    # the CUDA build of torch takes ~5.5 GB in .venv, and pip unpacks its wheels first
    free_gb=$(df -Pk . | awk 'NR == 2 {print int($4 / 1048576)}')
    need_gb=${VENV_MIN_FREE_GB:-8}
    if (( free_gb < need_gb )); then
      echo "error: installing $spec into .venv needs about $need_gb GB free on the disk of" \
           "$(pwd); ${free_gb} GB is free there. Free some space (old clones, /tmp) and rerun." >&2
      exit 1
    fi
    echo "installing $spec (a few minutes the first time)"
    $pip install -q $spec
  fi
fi
$pip install -q -e ".$extras"
echo "vlm_aug installed in .venv ($(.venv/bin/python -c 'import vlm_aug; print(vlm_aug.__version__)'))"
