#!/bin/sh
# Regenerates dashboard.schema.json: Grafana's dashboard schema (the classic JSON model that file provisioning
# loads) as JSON Schema (draft 7), made from the TypeScript types that Grafana publishes on npm.
# Needs Node.js and the npm registry; the tests only read the committed file.
#   deploy/grafana/schema/generate.sh [GRAFANA_SCHEMA_VERSION]
set -eu
VERSION="${1:-13.2.3}"
GENERATOR=2.4.0
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
npm pack --silent "@grafana/schema@$VERSION" >/dev/null
tar xzf grafana-schema-"$VERSION".tgz
npm install --silent --no-audit --no-fund "ts-json-schema-generator@$GENERATOR" >/dev/null
cp package/dist/types/raw/dashboard/x/types.gen.d.ts dashboard.ts
# objects are closed (additionalProperties: false) unless the type says otherwise: unknown keys are errors
npx ts-json-schema-generator --path dashboard.ts --type Dashboard --no-type-check -o raw.json
python3 - "$VERSION" "$GENERATOR" "$HERE/dashboard.schema.json" <<'PY'
import json, sys
version, generator, out = sys.argv[1:]
schema = json.load(open("raw.json"))
schema["$comment"] = (
    f"Generated from npm @grafana/schema@{version} dist/types/raw/dashboard/x/types.gen.d.ts (type Dashboard) "
    f"by ts-json-schema-generator@{generator}; regenerate with deploy/grafana/schema/generate.sh"
)
with open(out, "w") as fh:
    json.dump(schema, fh, indent=1, sort_keys=True)
    fh.write("\n")
PY
echo "wrote $HERE/dashboard.schema.json"
