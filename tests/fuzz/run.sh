#!/usr/bin/env bash
# Fuzz the GGUF path and the image path for SECONDS each (default 120), seeded with generated files.
#   tests/fuzz/run.sh [SECONDS] [HARNESS...]      HARNESS: gguf, image (default: both)
# Env: PYTHON (default python), FUZZ_WORK (corpus, seeds and findings; default a new temp dir),
# LLAMA_CPP_VOCAB (llama.cpp's models/ folder: its vocab GGUFs join the seeds), FUZZ_JOBS (parallel
# workers per harness, default 1). Exits 1 if any harness found an input that raises anything but a
# LlavaEdgeError, crashes, or runs past the per-input limit; the input is under $FUZZ_WORK/artifacts.
set -euo pipefail
seconds=${1:-120}
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -eq 0 ] && harnesses=(gguf image)
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python}
work=${FUZZ_WORK:-$(mktemp -d -t llava-edge-fuzz.XXXXXX)}
jobs=${FUZZ_JOBS:-1}
mkdir -p "$work"
"$python" "$here/seeds.py" "$work/seeds" ${LLAMA_CPP_VOCAB:+--llama-cpp-vocab "$LLAMA_CPP_VOCAB"}
status=0
for name in "${harnesses[@]}"; do
    mkdir -p "$work/corpus/$name" "$work/artifacts/$name"
    echo "== fuzz_$name: $seconds s, work dir $work"
    args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
          -artifact_prefix="$work/artifacts/$name/")
    if [ "$jobs" -gt 1 ]; then
        args+=(-fork="$jobs" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
    fi
    "$python" "$here/fuzz_$name.py" "$work/corpus/$name" "$work/seeds/$name" "${args[@]}" || status=1
    if compgen -G "$work/artifacts/$name/*" > /dev/null; then
        echo "== fuzz_$name findings:"; ls -l "$work/artifacts/$name"
        status=1
    fi
done
exit $status
