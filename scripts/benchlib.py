"""What the bench scripts share: a free loopback port, a `whisperd serve` started and waited for,
and a results file updated between markers (benches/RESULTS.md keeps several tables)."""
import http.client, os, platform, socket, subprocess, sys, time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_server(binary, model, env, log):
    """`whisperd serve` on a free loopback port, once /ready answers 200 (exits if it never does).
    Returns (process, port)."""
    port = free_port()
    server = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--port", str(port),
                               "--model", model], env=env, stdout=log, stderr=log)
    for _ in range(1200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/ready"); ok = c.getresponse().status == 200; c.close()
            if ok:
                return server, port
        except OSError:
            pass
        time.sleep(0.1)
    server.kill()
    sys.exit("server never became ready; log in " + log.name)


def write_between_markers(path, name, text):
    """Put `text` between `<!-- NAME:start -->` and `<!-- NAME:end -->` in `path` (appended with
    the markers when the file lacks them)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    old = open(path).read() if os.path.exists(path) else ""
    if start in old and end in old:
        new = old[:old.index(start) + len(start)] + "\n" + text + "\n" + old[old.index(end):]
    else:
        new = old + f"\n{start}\n{text}\n{end}\n"
    with open(path, "w") as f:
        f.write(new)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "unknown CPU")
    flags = next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), [])
    isa = [f for f in ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"] if f in flags]
    return f"{name} ({', '.join(isa) or 'no AVX2'}), {os.cpu_count()} cores visible"


def fetched_models(spec):
    """(directory, short name) for each comma-separated model directory that exists; the others
    are skipped with a note (`make model-base` fetches base)."""
    for model in [m for m in spec.split(",") if m]:
        if not os.path.isdir(model):
            print(f"skipping {model}: not fetched (make model / make model-base)", file=sys.stderr)
            continue
        yield model, os.path.basename(model.rstrip("/")).removeprefix("whisper-")
