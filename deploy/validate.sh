#!/usr/bin/env bash
# Checks deploy/ without a container engine (none runs in CI): the compose file resolves
# with the example environment, the Prometheus and Grafana files parse, every metric the
# dashboard queries is one the code records, and the shell scripts parse.
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

dashboard = json.load(open("grafana/dashboards/keyledger.json"))
exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
queried = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"keyledger_[a-z_]+", e)}
source = subprocess.run(["grep", "-rhoE", "keyledger_[a-z_]+", "../crates", "--include=*.rs"],
                        capture_output=True, text=True, check=True).stdout.split()
unknown = sorted(queried - set(source))
if unknown:
    sys.exit(f"deploy: the dashboard queries metrics no crate records: {unknown}")
print(f"deploy: compose file resolves; {len(jobs)} scrape jobs; dashboard: "
      f"{len(dashboard['panels'])} panels, {len(queried)} metrics, all recorded by the code")
PY

for script in healthcheck.sh rabbitmq/compose-entrypoint.sh postgres/initdb/*.sh; do
  bash -n "$script"
done
