"""A scriptable CNI plugin for runner tests: it records every call and
answers as its config tells it.  Installed under any name (its type is its
file name) by cnitest.install_fake_plugins; touches no kernel state.

Each call appends one JSON line to $FAKE_RECORD:
    {"type", "command", "env": {CNI_*...}, "stdin": <raw stdin text>}

Config key "fake" (all optional):
    "fail":   {"ADD": [code, "msg", "details"]}  print that CNI error, exit 1
    "raw":    {"ADD": [exit status, "stdout", "stderr"]}  print verbatim
    "result": {...}    the ADD result (default: prevResult, else a made-up one)
    "stderr": "text"   written to stderr on every call
"""

import json
import os
import sys

VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def made_up_result(v, ifname, netns):
    if v in ("", "0.1.0", "0.2.0"):
        return {"cniVersion": v or "0.1.0", "ip4": {"ip": "10.9.0.2/24", "gateway": "10.9.0.1"}}
    ip = {"address": "10.9.0.2/24", "gateway": "10.9.0.1", "interface": 0}
    if v < "1.0.0":
        ip["version"] = "4"
    return {"cniVersion": v, "interfaces": [{"name": ifname, "sandbox": netns}], "ips": [ip]}


def main():
    raw = sys.stdin.buffer.read()
    cmd = os.environ.get("CNI_COMMAND", "")
    record = os.environ.get("FAKE_RECORD")
    if record:
        with open(record, "a") as f:
            f.write(json.dumps({"type": os.path.basename(sys.argv[0]), "command": cmd,
                                "env": {k: v for k, v in os.environ.items() if k.startswith("CNI_")},
                                "stdin": raw.decode()}) + "\n")
    if cmd == "VERSION":
        print(json.dumps({"cniVersion": "1.1.0", "supportedVersions": VERSIONS}))
        return 0
    conf = json.loads(raw)
    fake = conf.get("fake") or {}
    if fake.get("stderr"):
        sys.stderr.write(fake["stderr"])
    if cmd in (fake.get("raw") or {}):
        rc, out, err = fake["raw"][cmd]
        sys.stdout.write(out)
        sys.stderr.write(err)
        return rc
    if cmd in (fake.get("fail") or {}):
        code, msg, *details = fake["fail"][cmd]
        err = {"cniVersion": conf.get("cniVersion"), "code": code, "msg": msg}
        if details:
            err["details"] = details[0]
        print(json.dumps(err))
        return 1
    if cmd == "ADD":
        res = fake.get("result") or conf.get("prevResult") or made_up_result(
            conf.get("cniVersion", ""), os.environ.get("CNI_IFNAME"), os.environ.get("CNI_NETNS"))
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
