#!/usr/bin/env python3
"""Checks that the chart's Grafana dashboard and alert rules query only metrics whisperd exports.

Loads helm/whisperd/dashboards/whisperd.json (it must parse as JSON) and the PrometheusRule's
expressions (the chart rendered with prometheusRule.enabled through helm-python-sdk; without it,
the `expr:` blocks of templates/prometheusrule.yaml read as text), takes every metric name out of
each PromQL expression (panel targets, template-variable queries, alert expressions) and looks each
`whisperd_*` name up in a Prometheus text exposition: the name exists if a sample of it, or a
`# TYPE`/`# HELP` line for it or (for `_bucket`/`_sum`/`_count`) for its histogram, appears.

Names that are not whisperd's must be in EXTERNAL (Prometheus' own `up`, kube-state-metrics).
Labelled whisperd metrics print nothing until a first label value is observed; the few that need
more than one transcription and a 4xx (Redis, async jobs finishing, webhooks) are in CONDITIONAL:
missing from the exposition they are listed, not failed (unless --require-conditional), but they
must still be registered in the Rust sources (src/**/*.rs), so a misspelt name fails either way.

Exits 1 listing the missing names; prints "dashboard ok: N metrics checked" on success.

usage: check_dashboard.py --metrics FILE_OR_URL [--chart helm/whisperd] [--no-rules]
                          [--require-conditional] [--verbose]
A URL must point at loopback (127.0.0.1, localhost or ::1); "-" reads the exposition from stdin.
"""
import argparse, glob, ipaddress, json, os, re, socket, sys, urllib.error, urllib.parse, urllib.request

# Metrics the dashboard or the alerts use that whisperd itself does not export.
EXTERNAL = {
    "up": "Prometheus: 1 when the last scrape of a target succeeded",
    "kube_deployment_status_replicas_available": "kube-state-metrics (WhisperdReplicasNotReady)",
    "kube_deployment_spec_replicas": "kube-state-metrics (WhisperdReplicasNotReady)",
}

# whisperd metrics with labels that appear in /metrics only once the traffic named here happened.
CONDITIONAL = {
    "whisperd_cache_shared_lookups_total": "redis_url set and a local cache miss",
    "whisperd_redis_errors_total": "redis_url set and a failed Redis call",
    "whisperd_async_jobs_finished_total": "an async job (POST /v1/jobs) finished",
    "whisperd_webhook_deliveries_total": "an async job with webhook_url finished (a webhook attempt)",
}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                   "group_right", "bool", "offset", "inf", "nan"}
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


# ----------------------------------------------------------------------------- the exposition
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


def read_exposition(source):
    if source == "-":
        return sys.stdin.read()
    if "://" not in source:
        with open(source, encoding="utf-8") as f:
            return f.read()
    url = urllib.parse.urlsplit(source)
    if url.scheme not in ("http", "https"):
        sys.exit(f"check_dashboard: {source}: only http(s) URLs")
    host = url.hostname or ""
    if host not in LOOPBACK_NAMES:
        sys.exit(f"check_dashboard: {source}: refusing a non-loopback host ({host!r}); use 127.0.0.1, localhost or ::1")
    # localhost must also resolve to loopback only.
    for info in socket.getaddrinfo(host, url.port or 80, proto=socket.IPPROTO_TCP):
        if not ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback:
            sys.exit(f"check_dashboard: {host} resolves to {info[4][0]}, not loopback")
    # No proxies from the environment, no redirects (they could lead off the machine).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())
    try:
        with opener.open(source, timeout=10) as r:
            return r.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        sys.exit(f"check_dashboard: {source}: {e}")


def parse_exposition(text):
    """(names with samples, names with a # TYPE or # HELP line)."""
    samples, declared = set(), set()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("TYPE", "HELP"):
                declared.add(parts[2])
            continue
        m = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
        if m:
            samples.add(m.group(0))
    return samples, declared


def exported(name, samples, declared):
    if name in samples or name in declared:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in declared:
            return True
    return False


# ----------------------------------------------------------------------------- PromQL
def metric_names(expr):
    """The metric names an expression selects (functions, keywords, labels, variables left out)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # string literals
    s = re.sub(r"\$__\w+|\$\{[^}]*\}|\[\[[^\]]*\]\]|\$\w+", " ", s)  # Grafana variables
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery windows
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # label lists
    s = re.sub(r"#[^\n]*", " ", s)  # comments
    # (A number swallows the letters after it: durations such as `offset 5m`, hex 0x1f.)
    names = set()
    for m in re.finditer(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z0-9]*|([a-zA-Z_:][a-zA-Z0-9_:]*)|\S", s):
        word = m.group(1)
        if not word or word.lower() in PROMQL_KEYWORDS:
            continue
        if re.match(r"\s*\(", s[m.end():]):  # a function or an aggregation
            continue
        names.add(word)
    return names


def variable_query_exprs(var):
    """PromQL inside a Grafana query variable (label_values(expr, label), query_result(expr))."""
    q = var.get("query")
    if isinstance(q, dict):
        q = q.get("query", "")
    if not isinstance(q, str) or not q.strip():
        return []
    q = q.strip()
    m = re.fullmatch(r"label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)", q, re.S)
    if m:
        return [m.group(1)]
    if re.fullmatch(r"label_values\(\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)", q) or q.startswith("metrics("):
        return []
    m = re.fullmatch(r"query_result\((.*)\)", q, re.S)
    return [m.group(1)] if m else [q]


def dashboard_exprs(dash):
    """(where, expr) for every panel target (rows and nested panels included) and query variable."""
    out = []

    def walk(panels, where):
        for p in panels or []:
            title = f"{where}panel {p.get('title', p.get('id'))!r}"
            for t in p.get("targets", []) or []:
                if isinstance(t.get("expr"), str) and t["expr"].strip():
                    out.append((f"{title} target {t.get('refId', '?')}", t["expr"]))
            walk(p.get("panels"), f"{title} > ")

    walk(dash.get("panels"), "")
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            out += [(f"variable ${var.get('name')}", e) for e in variable_query_exprs(var)]
    return out


def rule_exprs(chart):
    """(where, expr) of the PrometheusRule's rules, and how they were read."""
    try:
        import helm_python as helm
        import yaml
    except ImportError:
        return template_rule_exprs(chart), "templates/prometheusrule.yaml read as text (no helm_python)"
    values = {"prometheusRule": {"enabled": True}}
    with helm.Chart.load(chart) as c:
        rendered = c.render(values, name="whisperd", namespace="whisperd", is_install=True)
    out = []
    for name, text in rendered.items():
        if not name.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc or doc.get("kind") != "PrometheusRule":
                continue
            for g in doc.get("spec", {}).get("groups", []):
                for r in g.get("rules", []):
                    what = r.get("alert") or r.get("record")
                    out.append((f"rule {what}", r["expr"]))
    if not out:
        sys.exit("check_dashboard: the chart rendered no PrometheusRule with prometheusRule.enabled")
    return out, "the chart rendered with prometheusRule.enabled"


def template_rule_exprs(chart):
    path = os.path.join(chart, "templates", "prometheusrule.yaml")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out = []
    i = 0
    while i < len(lines):
        m = re.match(r"(\s*)expr:\s*(.*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, rest = len(m.group(1)), m.group(2)
        body = [] if rest.strip() in ("|", "|-", ">", ">-") else [rest]
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        expr = re.sub(r"\{\{.*?\}\}", " ", "\n".join(body), flags=re.S)  # Helm actions
        out.append((f"{os.path.basename(path)} expr", expr))
    return out


def registered_in_sources(names, src):
    """The names among `names` that appear as string literals in src/**/*.rs."""
    text = ""
    for path in glob.glob(os.path.join(src, "**", "*.rs"), recursive=True):
        with open(path, encoding="utf-8", errors="replace") as f:
            text += f.read()
    return {n for n in names if f'"{n}"' in text}


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metrics", required=True, help="Prometheus text exposition: a file, - (stdin) or a loopback URL")
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    ap.add_argument("--chart", default=os.path.join(root, "helm", "whisperd"))
    ap.add_argument("--src", default=os.path.join(root, "src"), help="Rust sources the CONDITIONAL names are looked up in")
    ap.add_argument("--no-rules", action="store_true", help="check the dashboard only")
    ap.add_argument("--require-conditional", action="store_true",
                    help="fail on CONDITIONAL metrics missing from the exposition too")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()

    path = os.path.join(a.chart, "dashboards", "whisperd.json")
    try:
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        print(f"FAIL: {path}: {e}")
        sys.exit(1)
    exprs = [(f"dashboard {w}", e) for w, e in dashboard_exprs(dash)]
    if not exprs:
        print(f"FAIL: {path}: no PromQL expressions found")
        sys.exit(1)
    if not a.no_rules:
        rules, how = rule_exprs(a.chart)
        exprs += rules
        if a.verbose:
            print(f"rules: {len(rules)} expressions from {how}")

    used = {}  # name -> where it is used
    for where, expr in exprs:
        for name in metric_names(expr):
            used.setdefault(name, []).append(where)

    samples, declared = parse_exposition(read_exposition(a.metrics))
    if not samples and not declared:
        print(f"FAIL: {a.metrics}: no metrics in it")
        sys.exit(1)

    missing, unknown, skipped, checked = [], [], [], 0
    for name in sorted(used):
        if not name.startswith("whisperd_"):
            if name not in EXTERNAL:
                unknown.append(name)
            continue
        checked += 1
        if exported(name, samples, declared):
            continue
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
        if (name in CONDITIONAL or base in CONDITIONAL) and not a.require_conditional:
            skipped.append(name)
        else:
            missing.append(name)
    if skipped and os.path.isdir(a.src):
        known = registered_in_sources(skipped, a.src)
        missing += [n for n in skipped if n not in known]
        skipped = [n for n in skipped if n in known]

    for name in sorted(used):
        if a.verbose:
            print(f"  {name}: {len(used[name])} use(s)")
    for name in skipped:
        why = CONDITIONAL.get(name) or next(CONDITIONAL[b] for b in CONDITIONAL if name.startswith(b))
        print(f"not in the exposition, not checked: {name} (appears after: {why})")
    for name in sorted(set(used) & set(EXTERNAL)):
        print(f"external, not checked: {name} ({EXTERNAL[name]})")
    errors = 0
    for name in unknown:
        print(f"FAIL: {name}: not a whisperd metric and not in the external allow-list; used in {', '.join(used[name][:3])}")
        errors += 1
    for name in sorted(set(missing)):
        print(f"FAIL: {name}: not in the exposition; used in {', '.join(used[name][:3])}"
              + (f" (+{len(used[name]) - 3} more)" if len(used[name]) > 3 else ""))
        errors += 1
    if errors:
        print(f"dashboard check: {errors} metric name(s) missing")
        sys.exit(1)
    print(f"dashboard ok: {checked} metrics checked")


if __name__ == "__main__":
    main()
