#!/usr/bin/env bash
# Vendor the dashboard's browser libraries, pinned in web/package-lock.json, into web/static/vendor (not in git):
#   bash web/vendor.sh            (infra/bootstrap.sh runs it; so does the Dockerfile's `web` stage)
# Skips the work when the vendored files match the lock file. Nothing is loaded from a CDN at run time.
set -euo pipefail
cd "$(dirname "$0")"
FILES=(uplot/dist/uPlot.iife.min.js uplot/dist/uPlot.min.css uplot/LICENSE
       swagger-ui-dist/swagger-ui-bundle.js swagger-ui-dist/swagger-ui.css)
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat static/vendor/.lock-sha256 2>/dev/null)" = "$want" ]; then exit 0; fi
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null
mkdir -p static/vendor
for f in "${FILES[@]}"; do
  name=$(basename "$f"); [ "$name" = LICENSE ] && name="uPlot.LICENSE"
  cp "node_modules/$f" "static/vendor/$name"
done
echo "$want" > static/vendor/.lock-sha256
