#!/usr/bin/env bash
# Checks deploy/ without a container engine (none runs in CI): the compose file resolves
# with the example environment, the Prometheus and Grafana files parse, every metric the
# dashboard queries is one the code records, every span it asks Tempo for is one the code
# opens, the datasources it and they link to exist, and the shell scripts parse.
# Needs docker-compose (Debian's 1.29 is enough); .ci/run installs it.
set -euo pipefail
cd "$(dirname "$0")"

# Resolves every ${…} from the example (a required one missing fails), checks the schema.
docker-compose -f compose.yaml --env-file .env.example config -q

# /usr/bin/python3: Debian's, which has PyYAML whenever docker-compose is installed.
/usr/bin/python3 - <<'PY'
import json, pathlib, re, subprocess, sys, yaml

prometheus = yaml.safe_load(open("prometheus/prometheus.yml"))
jobs = [job["job_name"] for job in prometheus["scrape_configs"]]
assert "keyledger" in jobs, jobs
for path in pathlib.Path("grafana/provisioning").rglob("*.yaml"):
    assert yaml.safe_load(open(path))["apiVersion"] == 1, path

for path in ["tempo/tempo.yaml", "loki/loki.yaml"]:
    assert isinstance(yaml.safe_load(open(path)), dict), path
datasources = {d["uid"]: d for path in pathlib.Path("grafana/provisioning/datasources").glob("*.yaml")
               for d in yaml.safe_load(open(path))["datasources"]}
for uid, source in datasources.items():
    linked = [v for k, v in source.get("jsonData", {}).items() if isinstance(v, dict) and "datasourceUid" in v]
    linked += source.get("jsonData", {}).get("derivedFields", [])
    for link in linked:
        assert link["datasourceUid"] in datasources, f"{uid} links to unknown datasource {link['datasourceUid']}"

dashboard = json.load(open("grafana/dashboards/keyledger.json"))
targets = [t for p in dashboard["panels"] for t in p.get("targets", [])]
for t in targets:
    uid = t.get("datasource", {}).get("uid", "prometheus")
    assert uid in datasources, f"the dashboard queries unknown datasource {uid}"
exprs = [t["expr"] for t in targets if "expr" in t]
# Span names a TraceQL query asks for must be spans the code opens.
spans = {m for t in targets for m in re.findall(r'name = "([a-z_.]+)"', t.get("query", ""))}
opened = set(subprocess.run(["grep", "-rhoE", r'"[a-z_]+\.[a-z_.]+"', "../crates", "--include=*.rs"],
                            capture_output=True, text=True, check=True).stdout.replace('"', "").split())
if spans - opened:
    sys.exit(f"deploy: the dashboard asks for spans no crate opens: {sorted(spans - opened)}")
queried = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"keyledger_[a-z_]+", e)}
source = subprocess.run(["grep", "-rhoE", "keyledger_[a-z_]+", "../crates", "--include=*.rs"],
                        capture_output=True, text=True, check=True).stdout.split()
unknown = sorted(queried - set(source))
if unknown:
    sys.exit(f"deploy: the dashboard queries metrics no crate records: {unknown}")
print(f"deploy: compose file resolves; {len(jobs)} scrape jobs; {len(datasources)} datasources; "
      f"dashboard: {len(dashboard['panels'])} panels, {len(queried)} metrics and {len(spans)} span "
      f"names, all recorded by the code")
PY

for script in healthcheck.sh rabbitmq/compose-entrypoint.sh postgres/initdb/*.sh; do
  bash -n "$script"
done
