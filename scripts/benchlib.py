"""What the bench scripts share: a free loopback port, a `whisperd serve` started and waited for,
and a results file updated between markers (benches/RESULTS.md keeps several tables)."""
import http.client, os, socket, subprocess, sys, time


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
