#!/usr/bin/env bash
# Fuzz a running `make serve` (http://127.0.0.1:8000) with schemathesis over its /openapi.json,
# at least 10,000 requests, and print how many responses got each status code.
# schemathesis is a dev tool, not a CI dependency: this script installs it into .venv.
#
#   make serve                        # in another terminal; wait for "Deployed app"
#   scripts/fuzz_schemathesis.sh      # BASE=http://host:port MAX_EXAMPLES=3000 to change
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-http://127.0.0.1:8000}
MAX_EXAMPLES=${MAX_EXAMPLES:-2500}   # per operation and phase; 4 operations x 2 phases >= 10,000
OUT=${OUT:-tmp/schemathesis}
VENV=${VENV:-.venv}
mkdir -p "$OUT"
"$VENV/bin/python" -c "import schemathesis" 2>/dev/null || "$VENV/bin/pip" install -q schemathesis
curl -fsS "$BASE/readyz" >/dev/null || { echo "nothing ready at $BASE/readyz: start make serve first" >&2; exit 2; }

# Every request and response goes to a HAR-like cassette; the counts come from it.
"$VENV/bin/schemathesis" run "$BASE/openapi.json" \
    --url "$BASE" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance \
    --phases examples,fuzzing \
    --max-examples "$MAX_EXAMPLES" \
    --mode all \
    --continue-on-failure \
    --workers 4 \
    --request-timeout 120 \
    --report-vcr-path "$OUT/cassette.yaml" \
    --report vcr | tee "$OUT/run.log" || true

"$VENV/bin/python" - "$OUT/cassette.yaml" <<'PY'
import collections, re, sys
codes = collections.Counter(re.findall(r"^\s+code: '?(\d{3})'?", open(sys.argv[1]).read(), re.M))
total = sum(codes.values())
print(f"{total} requests; status codes: " + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())))
sys.exit(1 if any(c.startswith("5") for c in codes) else 0)
PY
