#!/bin/sh
# Entrypoint of the DiffV2S image: `gateway`, `worker`, `export`, or any other command (run as is).
#
# worker: 1. claims one GPU that no other replica holds (flock on a shared volume), so that
#            `docker compose up --scale worker=N` puts one worker process on each GPU;
#         2. builds the inference engines once into the engine cache volume (first start only: one
#            replica builds under a lock, the others wait and reuse the result);
#         3. execs the Celery worker, which keeps the GPU lock open for its whole life.
set -eu

ROLE_FILE=${DIFFV2S_ROLE_FILE:-/tmp/diffv2s-role}
GPU_CLAIM_DIR=${DIFFV2S_GPU_CLAIM_DIR:-/run/diffv2s-gpu}

log() { echo "diffv2s-entrypoint: $*" >&2; }

claim_gpu() {
    [ "${DIFFV2S_CLAIM_GPU:-1}" = "1" ] || return 0
    if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
        log "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES set by the operator; not claiming"
        return 0
    fi
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        log "no nvidia-smi in the container: no GPU to claim (CPU run)"
        return 0
    fi
    uuids=$(nvidia-smi --query-gpu=uuid --format=csv,noheader 2>/dev/null || true)
    if [ -z "$uuids" ]; then
        log "nvidia-smi lists no GPU: running without one"
        return 0
    fi
    mkdir -p "$GPU_CLAIM_DIR"
    while :; do
        for uuid in $uuids; do
            # fd 9 stays open through `exec` below, so the claim lasts exactly as long as the worker.
            exec 9>"$GPU_CLAIM_DIR/$uuid.lock"
            if flock -n 9; then
                export CUDA_VISIBLE_DEVICES="$uuid"
                log "claimed GPU $uuid"
                return 0
            fi
            exec 9>&-
        done
        log "every GPU is held by another worker replica; waiting for one to free up"
        sleep "${DIFFV2S_GPU_CLAIM_RETRY_S:-10}"
    done
}

engine_cache_key() {
    # TensorRT engines only run on the GPU model and TensorRT version they were built for.
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)
    versions=$(python -c 'import importlib.metadata as m
out = []
for name in ("diffv2s", "tensorrt", "onnxruntime-gpu"):
    try:
        out.append(name + "-" + m.version(name))
    except m.PackageNotFoundError:
        pass
print("_".join(out))')
    printf '%s_%s' "${gpu:-nogpu}" "$versions" | tr -c 'A-Za-z0-9._-' '_'
}

build_engines() {
    [ "${DIFFV2S_BUILD_ENGINES:-1}" = "1" ] || return 0
    case "${DIFFV2S_ENGINE:-torch}" in
        torch) return 0 ;;  # the PyTorch engine needs no export
    esac
    root=${DIFFV2S_ENGINE_DIR:-/cache/engines}
    key=$(engine_cache_key)
    target="$root/$key"
    mkdir -p "$root"
    exec 8>"$root/.build.lock"
    flock 8
    if [ ! -f "$target/.complete" ]; then
        log "building ${DIFFV2S_ENGINE} engines into $target (first start on this GPU; takes a while)"
        tmp="$root/.building-$key"
        rm -rf "$tmp"
        diffv2s export --out "$tmp" --int8  # --int8: also the onnxruntime-cpu-int8 denoiser
        touch "$tmp/.complete"
        rm -rf "$target"
        mv "$tmp" "$target"
    else
        log "reusing engines in $target"
    fi
    exec 8>&-
    export DIFFV2S_ENGINE_DIR="$target"
}

main() {
    role=${1:-worker}
    [ "$#" -eq 0 ] || shift
    case "$role" in
        gateway)
            echo gateway >"$ROLE_FILE"
            # python -m service wipes PROMETHEUS_MULTIPROC_DIR at start and serves DIFFV2S_WEB_CONCURRENCY
            # uvicorn processes on DIFFV2S_HOST:DIFFV2S_PORT.
            export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/diffv2s-metrics}"
            # prometheus_client opens its files there as soon as service.metrics is imported.
            mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
            exec python -m service "$@"
            ;;
        worker)
            echo worker >"$ROLE_FILE"
            claim_gpu
            build_engines
            exec python -m worker "$@"
            ;;
        export)
            claim_gpu
            exec diffv2s export "$@"
            ;;
        *)
            exec "$role" "$@"
            ;;
    esac
}

# Sourcing with DIFFV2S_ENTRYPOINT_LIB=1 defines the functions only (tests call them one by one).
[ "${DIFFV2S_ENTRYPOINT_LIB:-0}" = "1" ] || main "$@"
