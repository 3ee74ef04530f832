#!/usr/bin/env python3
"""Checks what cannot run here: the Dockerfiles (hadolint) and the Helm chart (helm lint, render
with the default values and with helm/whisperd/ci/*.yaml, validate every rendered manifest against
the Kubernetes schemas with kubernetes-validate, plus checks of our own: probes, security context,
grace period vs. drain timeout, GPU request). Exits non-zero on any finding.

usage: lint_deploy.py [--chart helm/whisperd] [--dockerfiles docker/Dockerfile docker/Dockerfile.cuda]
"""
import argparse, glob, os, subprocess, sys, tempfile

import yaml
import helm_python as helm

KUBE_VERSION = "1.31.0"


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
        print(f"{label}: rendered {', '.join(sorted(kinds))}")
        for required in ["Deployment", "Service", "ConfigMap"]:
            if required not in kinds:
                errors += fail(f"{label}: no {required} rendered")

    print("deploy lint: " + ("ok" if errors == 0 else f"{errors} problem(s)"))
    sys.exit(1 if errors else 0)


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
