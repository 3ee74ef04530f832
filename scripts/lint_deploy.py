#!/usr/bin/env python3
"""Checks what cannot run here: the Dockerfiles (hadolint) and the Helm chart (helm lint, render
with the default values, with helm/whisperd/ci/*.yaml and with the monitoring objects on, validate
every rendered manifest against the Kubernetes schemas with kubernetes-validate, plus checks of our
own: probes, security context, grace period vs. drain timeout, GPU request; the Grafana dashboard
ConfigMap and the PrometheusRule render only when enabled, the dashboard is JSON, the rules pass
`promtool check rules` and the unit tests in helm/whisperd/ci/promtool/*.yaml pass
`promtool test rules`). Exits non-zero on any finding.

usage: lint_deploy.py [--chart helm/whisperd] [--dockerfiles docker/Dockerfile docker/Dockerfile.cuda]
"""
import argparse, glob, json, os, shutil, subprocess, sys, tempfile

import yaml
import helm_python as helm

KUBE_VERSION = "1.31.0"

# The monitoring objects (off by default) rendered on, as a cluster with the Prometheus operator and
# Grafana's dashboard sidecar would. "monitoring" keeps the alerts' defaults: the promtool unit
# tests (helm/whisperd/ci/promtool) run against its rules.
MONITORING_SETS = [
    ("monitoring", {
        "serviceMonitor": {"enabled": True},
        "grafana": {"dashboard": {"enabled": True, "annotations": {"grafana_folder": "Speech"}}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                           "runbookUrl": "https://runbooks.example.com/whisperd"},
    }),
    ("monitoring, custom", {
        "grafana": {"dashboard": {"enabled": True, "namespace": "monitoring", "label": "grafana_dashboard",
                                  "labelValue": "whisperd"}},
        "prometheusRule": {"enabled": True, "alertLabels": {"team": "speech"},
                           "selector": 'namespace="speech", service="whisperd"',
                           "alerts": {"highP99Latency": {"seconds": 60, "routes": "/v1/audio/.*"},
                                      "targetDown": {"enabled": False}}},
    }),
]
PROMTOOL_UNIT_TESTS = "monitoring"


def fail(msg):
    print(f"FAIL: {msg}")
    return 1


def check_deployment(doc, values, label):
    errors = 0
    spec = doc["spec"]["template"]["spec"]
    c = spec["containers"][0]
    for probe, path in [("startupProbe", "/health"), ("livenessProbe", "/health"), ("readinessProbe", "/ready")]:
        if c.get(probe, {}).get("httpGet", {}).get("path") != path:
            errors += fail(f"{label}: {probe} must GET {path}")
    sp = c["startupProbe"]
    if sp["periodSeconds"] * sp["failureThreshold"] < 120:
        errors += fail(f"{label}: startup probe allows under 120 s for model load")
    sc = c.get("securityContext", {})
    if sc.get("allowPrivilegeEscalation") is not False or sc.get("readOnlyRootFilesystem") is not True or sc.get("capabilities", {}).get("drop") != ["ALL"]:
        errors += fail(f"{label}: container securityContext must drop ALL, be read-only, no privilege escalation")
    if spec.get("securityContext", {}).get("runAsNonRoot") is not True:
        errors += fail(f"{label}: pod must run as non-root")
    cfg = values["config"]
    if spec["terminationGracePeriodSeconds"] <= cfg["drain_timeout_s"] + cfg.get("drain_grace_s", 0):
        errors += fail(f"{label}: terminationGracePeriodSeconds must exceed config.drain_grace_s + config.drain_timeout_s")
    limits = c.get("resources", {}).get("limits", {})
    if values["gpu"]["enabled"] and "nvidia.com/gpu" not in limits:
        errors += fail(f"{label}: gpu.enabled but no nvidia.com/gpu limit")
    if not c.get("resources", {}).get("requests"):
        errors += fail(f"{label}: no resource requests")
    return errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chart", default="helm/whisperd")
    ap.add_argument("--dockerfiles", nargs="*", default=["docker/Dockerfile", "docker/Dockerfile.cuda"])
    a = ap.parse_args()
    errors = 0

    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    r = subprocess.run([hadolint, *a.dockerfiles], capture_output=True, text=True)
    print(r.stdout, end="")
    if r.returncode != 0:
        errors += fail(f"hadolint: {r.stderr.strip() or 'findings above'}")

    with open(os.path.join(a.chart, "values.yaml")) as f:
        defaults = yaml.safe_load(f)
    value_sets = [("default values", {})]
    for path in sorted(glob.glob(os.path.join(a.chart, "ci", "*.yaml"))):
        with open(path) as f:
            value_sets.append((os.path.basename(path), yaml.safe_load(f)))
    value_sets += MONITORING_SETS
    errors += check_dashboard_json(a.chart)
    promtool = find_promtool()
    if promtool is None:
        errors += fail("promtool not found (it checks the PrometheusRule): install Debian's prometheus package, "
                       "`sudo apt-get install -y prometheus` (or put promtool on PATH)")
    else:
        errors += check_dashboard_promql(promtool, a.chart)

    for label, overrides in value_sets:
        report = helm.lint(a.chart, overrides or None, strict=True)
        for m in report.get("messages", []):
            if m.get("severity", 0) >= 2:
                errors += fail(f"helm lint ({label}): {m.get('path')}: {m.get('error')}")
        for e in report.get("errors", []) or []:
            errors += fail(f"helm lint ({label}): {e}")
        with helm.Chart.load(a.chart) as chart:
            rendered = chart.render(overrides or None, name="whisperd", namespace="speech", is_install=True)
        merged = merge(defaults, overrides)
        kinds = []
        rules = []
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for name, text in sorted(rendered.items()):
                if not name.endswith(".yaml") or not text.strip():
                    continue
                for i, doc in enumerate(d for d in yaml.safe_load_all(text) if d):
                    kinds.append(doc["kind"])
                    if doc["kind"] == "Deployment" and doc["metadata"]["name"].endswith("-redis"):
                        errors += check_redis(doc, label)
                    elif doc["kind"] == "Deployment":
                        errors += check_deployment(doc, merged, label)
                    if doc["kind"] == "ConfigMap" and "config.toml" in doc.get("data", {}):
                        errors += check_config_toml(doc["data"]["config.toml"], label)
                    if doc["kind"] == "ConfigMap" and "whisperd.json" in doc.get("data", {}):
                        kinds[-1] = "ConfigMap (dashboard)"
                        errors += check_dashboard_configmap(doc, merged, a.chart, label)
                    if doc["kind"] == "PrometheusRule":  # a CRD too: shape here, promtool below
                        errors += check_prometheus_rule(doc, label)
                        rules.append(doc)
                        continue
                    if doc["kind"] == "ServiceMonitor":  # a CRD: no upstream schema, check its shape
                        ep = doc.get("spec", {}).get("endpoints", [{}])[0]
                        if ep.get("path") != "/metrics" or ep.get("port") != "http":
                            errors += fail(f"{label}: ServiceMonitor must scrape port http at /metrics")
                        continue
                    p = os.path.join(tmp, f"{os.path.basename(name)}-{i}.yaml")
                    with open(p, "w") as f:
                        yaml.safe_dump(doc, f)
                    files.append(p)
            kv = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
            r = subprocess.run([kv, "--strict", "--quiet", "-k", KUBE_VERSION, *files], capture_output=True, text=True)
            if r.returncode != 0:
                errors += fail(f"kubernetes-validate ({label}):\n{r.stdout}{r.stderr}")
            if rules and promtool:
                errors += run_promtool(promtool, rules, tmp, a.chart, label, unit_tests=label == PROMTOOL_UNIT_TESTS)
        print(f"{label}: rendered {', '.join(sorted(kinds))}")
        for required in ["Deployment", "Service", "ConfigMap"]:
            if required not in kinds:
                errors += fail(f"{label}: no {required} rendered")
        # The monitoring objects render exactly when their switch is on (off in the defaults).
        for kind, on in [("ConfigMap (dashboard)", merged["grafana"]["dashboard"]["enabled"]),
                         ("PrometheusRule", merged["prometheusRule"]["enabled"]),
                         ("ServiceMonitor", merged["serviceMonitor"]["enabled"])]:
            if on and kind not in kinds:
                errors += fail(f"{label}: {kind} enabled but not rendered")
            if not on and kind in kinds:
                errors += fail(f"{label}: {kind} rendered though not enabled")

    print("deploy lint: " + ("ok" if errors == 0 else f"{errors} problem(s)"))
    sys.exit(1 if errors else 0)


def find_promtool():
    for p in ["/usr/bin/promtool", shutil.which("promtool")]:
        if p and os.access(p, os.X_OK):
            return p
    return None


def check_dashboard_json(chart):
    """The dashboard the chart ships is JSON, a Grafana dashboard with a Prometheus datasource variable."""
    path = os.path.join(chart, "dashboards", "whisperd.json")
    try:
        with open(path) as f:
            dash = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        return fail(f"{path}: {e}")
    errors = 0
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource" or variables["datasource"].get("query") != "prometheus":
        errors += fail(f"{path}: no `datasource` variable of type datasource (prometheus)")
    if not dash.get("uid") or not dash.get("title") or not isinstance(dash.get("schemaVersion"), int):
        errors += fail(f"{path}: uid, title and schemaVersion are required")
    targets = 0
    for p in dash.get("panels", []):
        for t in p.get("targets", []) or []:
            targets += 1
            if t.get("datasource", p.get("datasource", {})).get("uid") != "${datasource}":
                errors += fail(f"{path}: panel {p.get('title')!r} does not query ${{datasource}}")
            if not t.get("expr", "").strip():
                errors += fail(f"{path}: panel {p.get('title')!r} has a target without expr")
    if targets == 0:
        errors += fail(f"{path}: no panel queries")
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)):
        errors += fail(f"{path}: panel ids are not unique")
    return errors


def check_dashboard_promql(promtool, chart):
    """Every PromQL expression of the dashboard parses: each (Grafana's variables replaced, $__*
    intervals by 5m, the others by .*: they only appear in regex matchers) becomes a recording rule
    for `promtool check rules`. Which metrics they name is scripts/check_dashboard.py's job."""
    import re
    with open(os.path.join(chart, "dashboards", "whisperd.json")) as f:
        dash = json.load(f)
    exprs = []
    for p in dash.get("panels", []):
        for t in p.get("targets", []) or []:
            exprs.append((f"panel {p.get('title')!r} {t.get('refId')}", t.get("expr", "")))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.*),\s*\w+\s*\)", q or "", re.S) if v.get("type") == "query" else None
        if m:
            exprs.append((f"variable ${v['name']}", m.group(1)))
    rules = []
    for i, (where, e) in enumerate(exprs):
        e = re.sub(r"\$__\w+", "5m", e)
        e = re.sub(r"\$\{\w+\}|\$\w+", ".*", e)
        rules.append({"record": f"dashboard:expr_{i}", "expr": e, "labels": {"where": where}})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dashboard-exprs.yaml")
        with open(path, "w") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
    if r.returncode != 0:
        return fail(f"dashboard PromQL does not parse (promtool check rules):\n{r.stdout}{r.stderr}")
    print(f"dashboard: {len(rules)} PromQL expressions parse")
    return 0


def check_dashboard_configmap(doc, values, chart, label):
    """The sidecar's label, and the dashboard itself as the data (byte for byte, still JSON)."""
    errors = 0
    g = values["grafana"]["dashboard"]
    if doc["metadata"].get("labels", {}).get(g["label"]) != str(g["labelValue"]):
        errors += fail(f"{label}: dashboard ConfigMap lacks the label {g['label']}: {g['labelValue']!r}")
    with open(os.path.join(chart, "dashboards", "whisperd.json")) as f:
        shipped = f.read()
    data = doc["data"]["whisperd.json"]
    if data.rstrip("\n") != shipped.rstrip("\n"):
        errors += fail(f"{label}: dashboard ConfigMap data differs from dashboards/whisperd.json")
    try:
        json.loads(data)
    except json.JSONDecodeError as e:
        errors += fail(f"{label}: dashboard ConfigMap data is not JSON: {e}")
    return errors


def check_prometheus_rule(doc, label):
    """Every alert has an expression, a severity and a summary and description."""
    errors = 0
    groups = doc.get("spec", {}).get("groups") or []
    alerts = [r for g in groups for r in g.get("rules") or []]
    if not alerts:
        errors += fail(f"{label}: PrometheusRule has no rules")
    for r in alerts:
        name = r.get("alert") or r.get("record")
        if not r.get("expr"):
            errors += fail(f"{label}: rule {name}: no expr")
        if r.get("alert"):
            if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                errors += fail(f"{label}: alert {name}: severity must be critical, warning or info")
            for key in ("summary", "description"):
                if not r.get("annotations", {}).get(key):
                    errors += fail(f"{label}: alert {name}: no {key} annotation")
    return errors


def run_promtool(promtool, rules, tmp, chart, label, unit_tests):
    """`promtool check rules` on the rule groups; with unit_tests, `promtool test rules` on
    helm/whisperd/ci/promtool/*.yaml against them (static annotations dropped: the tests compare the
    templated summary only)."""
    errors = 0
    groups = [g for doc in rules for g in doc["spec"]["groups"]]
    path = os.path.join(tmp, "whisperd-rules.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"groups": groups}, f, sort_keys=False)
    r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
    if r.returncode != 0:
        return fail(f"promtool check rules ({label}):\n{r.stdout}{r.stderr}")
    print(f"{label}: promtool check rules: {(r.stdout + r.stderr).strip().splitlines()[-1].strip()}")
    if not unit_tests:
        return 0
    tests = sorted(glob.glob(os.path.join(chart, "ci", "promtool", "*.yaml")))
    if not tests:
        return fail(f"{label}: no promtool unit tests in {os.path.join(chart, 'ci', 'promtool')}")
    for g in groups:
        for rule in g.get("rules", []):
            for key in ("description", "runbook", "runbook_url"):
                rule.get("annotations", {}).pop(key, None)
    with open(path, "w") as f:
        yaml.safe_dump({"groups": groups}, f, sort_keys=False)
    copies = []
    for t in tests:
        copies.append(os.path.join(tmp, os.path.basename(t)))
        shutil.copyfile(t, copies[-1])
    r = subprocess.run([promtool, "test", "rules", *copies], capture_output=True, text=True, cwd=tmp)
    if r.returncode != 0:
        errors += fail(f"promtool test rules ({label}):\n{r.stdout}{r.stderr}")
    else:
        print(f"{label}: promtool test rules: {len(tests)} file(s) SUCCESS")
    return errors


def check_redis(doc, label):
    """The chart's internal Redis: hardened like the server, never evicting queued jobs."""
    errors = 0
    spec = doc["spec"]["template"]["spec"]
    c = spec["containers"][0]
    sc = c.get("securityContext", {})
    if sc.get("allowPrivilegeEscalation") is not False or sc.get("readOnlyRootFilesystem") is not True:
        errors += fail(f"{label}: redis container must be read-only without privilege escalation")
    if spec.get("securityContext", {}).get("runAsNonRoot") is not True:
        errors += fail(f"{label}: redis pod must run as non-root")
    args = c.get("args", [])
    if "volatile-lru" not in args and "noeviction" not in args:
        errors += fail(f"{label}: redis may evict only keys with an expiry (queued jobs have none)")
    labels = doc["spec"]["selector"]["matchLabels"]
    if not labels.get("app.kubernetes.io/name", "").endswith("-redis"):
        errors += fail(f"{label}: redis selector must not match the server's pods")
    return errors


def check_config_toml(text, label):
    """The rendered config.toml parses as TOML and names only settings whisperd has."""
    import tomllib
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return fail(f"{label}: ConfigMap config.toml is not TOML: {e}")
    with open(os.path.join(os.path.dirname(__file__), "..", "config", "default.toml"), "rb") as f:
        known = tomllib.load(f)
    unknown = sorted(set(cfg) - set(known))
    return fail(f"{label}: config.toml has settings whisperd does not know: {unknown}") if unknown else 0


def merge(base, over):
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


if __name__ == "__main__":
    main()
