#!/bin/sh
# Entrypoint of the DiffV2S image: `gateway`, `worker`, `export`, or any other command (run as is).
#
# worker: 1. claims one GPU, or one MIG device, that no other worker on this Docker host holds (flock on
#            the host-wide `diffv2s-gpu-claims` volume), so `docker compose up --scale worker=N` puts one
#            worker process on each GPU, and a second stack or a `docker run` that mounts the same
#            volume cannot double-book one;
#         2. builds the inference engines once per claimed device into the engine cache volume, in a
#            folder named after the device's UUID (first start only: one replica builds under a lock,
#            a restart reuses the result);
#         3. execs the Celery worker, which keeps the GPU lock open for its whole life.
set -eu

ROLE_FILE=${DIFFV2S_ROLE_FILE:-/tmp/diffv2s-role}
GPU_CLAIM_DIR=${DIFFV2S_GPU_CLAIM_DIR:-/run/diffv2s-gpu}

log() { echo "diffv2s-entrypoint: $*" >&2; }

# The CUDA devices a worker can claim, one UUID per line, from `nvidia-smi -L`: a GPU's own UUID
# (GPU-...), or, for a GPU in MIG mode, the UUIDs of its MIG devices (MIG-...) instead; CUDA cannot run
# on a MIG-enabled GPU as a whole.
claimable_devices() {
    nvidia-smi -L 2>/dev/null | awk '
        function uuid() { match($0, /UUID: [^)]*/); return substr($0, RSTART + 6, RLENGTH - 6) }
        /^GPU [0-9]/ { if (gpu != "" && !mig) print gpu; gpu = uuid(); mig = 0; next }
        /UUID: MIG-/ { print uuid(); mig = 1 }
        END { if (gpu != "" && !mig) print gpu }'
}

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
    devices=$(claimable_devices || true)
    if [ -z "$devices" ]; then
        log "nvidia-smi lists no GPU: running without one"
        return 0
    fi
    mkdir -p "$GPU_CLAIM_DIR"
    if command -v mountpoint >/dev/null 2>&1 && ! mountpoint -q "$GPU_CLAIM_DIR"; then
        log "warning: $GPU_CLAIM_DIR is not a mounted volume, so other containers cannot see this claim;" \
            "mount the diffv2s-gpu-claims volume there (README, Deploy)"
    fi
    while :; do
        for uuid in $devices; do
            # fd 9 stays open through `exec` below, so the claim lasts exactly as long as the worker.
            exec 9>"$GPU_CLAIM_DIR/$uuid.lock"
            if flock -n 9; then
                export CUDA_VISIBLE_DEVICES="$uuid"
                log "claimed GPU $uuid"
                return 0
            fi
            exec 9>&-
        done
        log "every GPU is held by another worker on this host; waiting for one to free up"
        sleep "${DIFFV2S_GPU_CLAIM_RETRY_S:-10}"
    done
}

engine_cache_key() {
    # TensorRT engines run only on the device and TensorRT version they were built for, so the folder
    # is named after the device this worker uses: the UUID it claimed (or the operator's choice), not
    # GPU 0 of the host, and a MIG device gets its own folder.
    device=${CUDA_VISIBLE_DEVICES:-}
    if [ -z "$device" ] && command -v nvidia-smi >/dev/null 2>&1; then
        device=$(claimable_devices | head -n 1 || true)
    fi
    versions=$(python -c 'import importlib.metadata as m
out = []
for name in ("diffv2s", "tensorrt", "tensorrt-cu13", "onnxruntime-gpu"):
    try:
        out.append(name + "-" + m.version(name))
    except m.PackageNotFoundError:
        pass
print("_".join(out))')
    printf '%s_%s' "${device:-nogpu}" "$versions" | tr -c 'A-Za-z0-9._-' '_'
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
    # One lock per folder: workers on different GPUs build side by side, a restart waits for nothing.
    exec 8>"$root/.build-$key.lock"
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
