#!/usr/bin/env bash
# The test suite: every notebook's cells (slow ones included), then pytest's tests/.
# The notebooks run from copies in nbs_executed/ so their outputs (tables, plots) can feed the docs
# site (`python scripts/docs.py site --executed nbs_executed`) without touching the clean sources.
set -euo pipefail
cd "$(dirname "$0")/.."

rm -rf nbs_executed && mkdir nbs_executed
cp nbs/*.ipynb nbs/*.yml nbs/*.css nbs_executed/
echo "== nbdev-test: every notebook, --flags slow"
nbdev-test nbs_executed --flags slow --save --timing --do-print

echo "== pytest tests/"
status=0
python -m pytest tests/ -q -ra "$@" || status=$?
if [ "$status" -eq 5 ]; then echo "pytest collected no tests: that is a failure"; exit 1; fi
exit "$status"
