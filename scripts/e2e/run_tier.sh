#!/usr/bin/env bash
# The real-vLLM end-to-end tier, as .ci/run calls it:
#
#   scripts/e2e/run_tier.sh [PROJECT_VENV_OR_PYTHON] [extra pytest args...]
#
# 1. scripts/e2e/setup_vllm.sh  (cached vLLM venv; ~2-4 min the first time, seconds after)
# 2. build_tiny_model.py        (offline tiny Llama + locate all-MiniLM-L6-v2; cached)
# 3. pytest -m e2e tests/e2e -v with the PROJECT's python (not the vLLM venv's: the tests import
#    the control plane; the servers run in the vLLM venv as subprocesses)
#
# PROJECT_VENV_OR_PYTHON: a venv directory or a python executable; default the active venv's
# python ($VIRTUAL_ENV) or `python3` on PATH. Server logs go to $SAGE_CP_E2E_LOG_DIR (default a
# fresh /tmp directory, printed). SAGE_CP_E2E_TIER_TIMEOUT bounds the pytest phase (default
# 2700 s) so a hung server can never eat CI's 90 minutes.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"

if [[ $# -ge 1 && "$1" != -* ]]; then
    target="$1"
    shift
    if [[ -d "${target}" ]]; then
        PROJECT_PY="${target}/bin/python"
    else
        PROJECT_PY="${target}"
    fi
elif [[ -n "${VIRTUAL_ENV:-}" ]]; then
    PROJECT_PY="${VIRTUAL_ENV}/bin/python"
else
    PROJECT_PY="$(command -v python3)"
fi
if ! "${PROJECT_PY}" -c 'import pytest, httpx' 2>/dev/null; then
    echo "run_tier: ${PROJECT_PY} lacks pytest/httpx; pass the project venv as \$1" >&2
    exit 2
fi

VENV="${SAGE_CP_E2E_VENV:-$HOME/.cache/sage-cp/vllm-venv}"
export SAGE_CP_E2E_VENV="${VENV}"
export SAGE_CP_E2E_LOG_DIR="${SAGE_CP_E2E_LOG_DIR:-$(mktemp -d /tmp/sage-cp-e2e-logs.XXXXXX)}"
TIER_TIMEOUT="${SAGE_CP_E2E_TIER_TIMEOUT:-2700}"

declare -a PHASES=()
phase_start=0
begin() { phase_start=$(date +%s); echo "=== [e2e tier] $1"; }
end() {
    local took=$(( $(date +%s) - phase_start ))
    PHASES+=("$1: ${took} s")
    echo "=== [e2e tier] $1 took ${took} s"
}
summary() {
    if [[ -f "${SAGE_CP_E2E_LOG_DIR}/instances.txt" ]]; then
        echo "=== [e2e tier] vLLM instances (startup, memory):"
        cat "${SAGE_CP_E2E_LOG_DIR}/instances.txt"
    fi
    echo "=== [e2e tier] timings: ${PHASES[*]:-none}; server logs in ${SAGE_CP_E2E_LOG_DIR}"
}
trap summary EXIT
tier_start=$(date +%s)

begin "setup vLLM venv (${VENV})"
bash "${HERE}/setup_vllm.sh"
end "setup"

begin "build models"
"${VENV}/bin/python" "${HERE}/build_tiny_model.py"
end "models"

begin "pytest -m e2e tests/e2e (timeout ${TIER_TIMEOUT} s)"
cd "${ROOT}"
set +e
# SIGTERM on timeout: conftest turns it into KeyboardInterrupt, so fixtures stop the servers.
timeout --signal=TERM --kill-after=60 "${TIER_TIMEOUT}" \
    "${PROJECT_PY}" -m pytest -m e2e tests/e2e -v -p no:cacheprovider --durations=10 "$@"
rc=$?
set -e
end "pytest"
PHASES+=("total: $(( $(date +%s) - tier_start )) s")
if [[ ${rc} -eq 124 ]]; then
    echo "=== [e2e tier] pytest timed out after ${TIER_TIMEOUT} s" >&2
fi
exit "${rc}"
