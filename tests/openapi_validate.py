"""Validate real whisperd responses against whisperd's own OpenAPI document (GET /openapi.json).

  python openapi_validate.py DOC.json SAMPLES.json
SAMPLES: [{"method", "path" (the document's path template), "status", "content_type", "body",
"component" (optional: the schema the body must also match by name)}]. For each sample the
document must describe that method, path, status and content type; a JSON body must validate
against the described schema (its `oneOf` alternatives read as "one of these shapes", i.e. anyOf)
and against the named component. Exits 1 listing every failure.
"""
import copy, json, sys

import jsonschema


def any_of(node):
    if isinstance(node, dict):
        return {("anyOf" if k == "oneOf" else k): any_of(v) for k, v in node.items()}
    if isinstance(node, list):
        return [any_of(v) for v in node]
    return node


def check(doc, schema, body):
    root = any_of(copy.deepcopy(schema))
    root["components"] = any_of(doc.get("components", {}))
    v = jsonschema.Draft202012Validator(root)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}" for e in v.iter_errors(body)]


def main():
    doc = json.load(open(sys.argv[1]))
    samples = json.load(open(sys.argv[2]))
    failures = []
    for s in samples:
        where = f"{s['method'].upper()} {s['path']} {s['status']} {s['content_type']}"
        op = doc.get("paths", {}).get(s["path"], {}).get(s["method"])
        if op is None:
            failures.append(f"{where}: path not in the document")
            continue
        resp = op.get("responses", {}).get(str(s["status"]))
        if resp is None:
            failures.append(f"{where}: status not documented")
            continue
        content = resp.get("content", {}).get(s["content_type"])
        if content is None:
            failures.append(f"{where}: content type not documented (has {list(resp.get('content', {}))})")
            continue
        if s["content_type"] != "application/json":
            continue
        for e in check(doc, content.get("schema", {}), s["body"]):
            failures.append(f"{where}: {e}")
        if s.get("component"):
            schema = {"$ref": f"#/components/schemas/{s['component']}"}
            for e in check(doc, schema, s["body"]):
                failures.append(f"{where} as {s['component']}: {e}")
    for f in failures:
        print(f)
    print(f"{len(samples)} responses checked, {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
