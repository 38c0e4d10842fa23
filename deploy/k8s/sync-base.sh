#!/usr/bin/env sh
# Copies the Grafana dashboards and the Prometheus rules into the kustomize base, so that the base renders
# with kustomize's default load restrictor (`kubectl apply -k`: no file from outside the base's folder).
# Run it after changing deploy/grafana/dashboards/*.json or deploy/prometheus/rules/*.yml;
# tests/deploy/test_kubernetes.py fails while a copy differs from its source.
set -eu
cd "$(dirname "$0")/../.."
out=deploy/k8s/base/monitoring
mkdir -p "$out"
cp deploy/grafana/dashboards/overview.json "$out/llm-gateway-overview.json"
cp deploy/grafana/dashboards/strategies.json "$out/llm-gateway-strategies.json"
cp deploy/prometheus/rules/recording.yml "$out/recording.yml"
cp deploy/prometheus/rules/alerts.yml "$out/alerts.yml"
