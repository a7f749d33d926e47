#!/usr/bin/env python3
"""Availability probe, run on a lab node while a lifecycle verb acts (stdlib only).

    probe.py OUTDIR SERVICE_IP NODE [MAX_SECONDS]

Every 100 ms, on fresh connections: GET this node's Node object from the API through the
node's load balancer (https://127.0.0.1:7443, as the kubelet: the client certificate of
kubelet.conf; the Node authorizer allows exactly that read), and GET
/hostname from the Service at SERVICE_IP:80. Each result is a line in OUTDIR/api.log and
OUTDIR/service.log: "<epoch seconds at start> <1|0> <seconds taken> <detail>". A third thread
measures the probe itself: it sleeps 50 ms at a time and logs every wake-up later than 0.2 s to
OUTDIR/stall.log ("<epoch seconds> <seconds late>"), so that a gap the probe's own process
caused (not scheduled, blocked) is told apart from one the cluster caused. OUTDIR belongs on a
tmpfs (/run): a log write that waits for a busy disk's journal would itself be a gap. Stops when
OUTDIR/stop exists or after MAX_SECONDS (default 1800): its loops are bounded.
"""
import base64
import http.client
import os
import re
import ssl
import sys
import threading
import time

out, svc, node = sys.argv[1], sys.argv[2], sys.argv[3]
limit = float(sys.argv[4]) if len(sys.argv) > 4 else 1800.0
os.makedirs(out, exist_ok=True)
KUBECONFIG = "/etc/kubernetes/kubelet.conf"


def load_context():
    """The kubelet's credentials as a TLS context; re-read when kubelet.conf changes (a CA
    rotation replaces its CA data and client certificate, as it restarts the kubelet)."""
    conf = open(KUBECONFIG).read()

    def field(name):
        return base64.b64decode(re.search(rf"{name}: (\S+)", conf).group(1))

    for name, fname in (("certificate-authority-data", "ca.pem"), ("client-certificate-data", "crt.pem"),
                        ("client-key-data", "key.pem")):
        fd = os.open(os.path.join(out, fname), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, field(name))
        os.close(fd)
    c = ssl.create_default_context(cafile=os.path.join(out, "ca.pem"))
    c.load_cert_chain(os.path.join(out, "crt.pem"), os.path.join(out, "key.pem"))
    return c


ctx, ctx_mtime = load_context(), os.stat(KUBECONFIG).st_mtime


def api_conn():
    global ctx, ctx_mtime
    m = os.stat(KUBECONFIG).st_mtime
    if m != ctx_mtime:
        ctx, ctx_mtime = load_context(), m
    return http.client.HTTPSConnection("127.0.0.1", 7443, context=ctx, timeout=2)


deadline = time.time() + limit
stop = os.path.join(out, "stop")


def loop(name, make, path):
    with open(os.path.join(out, f"{name}.log"), "a", buffering=1) as log:
        while time.time() < deadline and not os.path.exists(stop):
            t, t0 = time.time(), time.monotonic()
            try:
                c = make()
                c.request("GET", path)
                r = c.getresponse()
                body = r.read()[:60].decode(errors="replace").replace("\n", " ")
                c.close()
                ok = r.status == 200
                detail = f"{r.status} {body}"
            except Exception as e:  # noqa: BLE001 - every failure is a data point
                ok, detail = False, f"{type(e).__name__}: {e}"
            log.write(f"{t:.3f} {int(ok)} {time.monotonic() - t0:.3f} {detail}\n")
            time.sleep(max(0.0, 0.1 - (time.time() - t)))


def watchdog():
    with open(os.path.join(out, "stall.log"), "a", buffering=1) as log:
        while time.time() < deadline and not os.path.exists(stop):
            t0 = time.monotonic()
            time.sleep(0.05)
            late = time.monotonic() - t0 - 0.05
            if late > 0.2:
                log.write(f"{time.time():.3f} {late:.3f}\n")


threads = [
    threading.Thread(target=watchdog),
    threading.Thread(target=loop, args=("api", api_conn, f"/api/v1/nodes/{node}")),
    threading.Thread(target=loop, args=("service", lambda: http.client.HTTPConnection(
        svc, 80, timeout=2), "/hostname")),
]
for th in threads:
    th.start()
for th in threads:
    th.join()
