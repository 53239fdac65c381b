"""doctor's config checks: the conf dir in load order, the plugin binaries,
flannel's subnet.env."""

import ipaddress
import os

from cnilib.base import errors
from cnilib.ops.doctor.context import config_subnets, flannel_networks, plugin_types, process_running
from cnilib.ops.doctor.report import worst


def conf_dir_findings(configs, subnet_env_of=lambda path: None, flannel_live=False):
    """The conflists check on runner.load_all's [(path, NetworkList or CniError)]:
    returns (status, summary, evidence, fix).  Pure.

    A runtime (containerd, cri-o) uses the first file in lexical order as
    the pod network, and containerd refuses to go on when that file does
    not parse; libcni finds a network by name in *.conflist first, then
    *.conf/*.json, so of two files with one name the other is never loaded."""
    if not configs:
        return ("FAIL", "no network config: the runtime reports the network not ready "
                "(NetworkPluginNotReady / cni config uninitialized)", [],
                ["install a conflist there (flannel: kube-flannel's install-cni writes "
                 "10-flannel.conflist)"])
    good = [(p, n) for p, n in configs if not isinstance(n, errors.CniError)]
    bad = [(p, n) for p, n in configs if isinstance(n, errors.CniError)]
    evidence, fails, warns, fix = [], [], [], []
    for i, (p, n) in enumerate(configs, 1):
        base = os.path.basename(p)
        if isinstance(n, errors.CniError):
            evidence.append("%d. %s: does not load: %s" % (i, base, n.msg))
        else:
            evidence.append("%d. %s: network %s (%s), cniVersion %s" % (
                i, base, n.name, ", ".join(str(p.get("type")) for p in n.plugins), n.version))
    first_path, first = configs[0]
    if isinstance(first, errors.CniError):
        fails.append("the first file, %s, does not load: containerd stops there and has no pod "
                     "network" % os.path.basename(first_path))
        fix.append("fix or move aside %s" % first_path)
    for p, _n in bad[1 if bad and bad[0][0] == first_path else 0:]:
        warns.append("%s does not load (runtimes skip or stop at it)" % os.path.basename(p))
        fix.append("fix or move aside %s" % p)
    names = {}
    for p, n in good:
        names.setdefault(n.name, []).append(p)
    for name, files in sorted(names.items()):
        if len(files) > 1:
            won = sorted(files, key=lambda x: (not x.endswith(".conflist"), x))[0]
            fails.append("network %s is defined by %s: libcni loads %s by name, the other%s never"
                         % (name, ", ".join(os.path.basename(x) for x in files),
                            os.path.basename(won), "s" if len(files) > 2 else ""))
            fix += ["mv %s /root/   # a duplicate of %s" % (x, name) for x in files if x != won]
    nets = []
    for p, n in good:
        for cidr, where in config_subnets(n, subnet_env_of):
            try:
                nets.append((ipaddress.ip_network(cidr, strict=False), n.name, p, where))
            except ValueError:
                continue
    for i, (a, an, ap, _w) in enumerate(nets):
        for b, bn, bp, _w2 in nets[i + 1:]:
            if an != bn and a.version == b.version and a.overlaps(b):
                fails.append("networks %s (%s, %s) and %s (%s, %s) overlap" % (
                    an, a, os.path.basename(ap), bn, b, os.path.basename(bp)))
                fix.append("give one of them another subnet, or move aside the one not in use")
    if good:
        dp, dn = good[0]
        others = [(p, n) for p, n in good[1:] if n.name != dn.name]
        if others:
            text = "the runtime's pod network is %s (%s, first in lexical order); %s load only by " \
                   "name" % (dn.name, os.path.basename(dp),
                             ", ".join("%s (%s)" % (n.name, os.path.basename(p)) for p, n in others))
            shadowed_flannel = [n for p, n in others
                                if any(x.get("type") == "flannel" for x in n.plugins)]
            default_flannel = any(x.get("type") == "flannel" for x in dn.plugins)
            if flannel_live and shadowed_flannel and not default_flannel:
                fails.append(text + "; this node runs flannel, yet its flannel network %s is "
                             "shadowed" % shadowed_flannel[0].name)
                fix.append("mv %s /root/   # the file shadowing the flannel conflist" % dp)
            else:
                warns.append(text)
                fix.append("if %s is not the network pods should get, move %s out of %s"
                           % (dn.name, os.path.basename(dp), os.path.dirname(dp)))
    if fails:
        return "FAIL", "; ".join(fails), evidence + ["also: " + w for w in warns], fix
    if warns:
        return "WARN", "; ".join(warns), evidence, fix
    dp, dn = good[0]
    return "PASS", "%d config(s); the runtime loads %s (network %s)" % (
        len(configs), os.path.basename(dp), dn.name), evidence, []


def check_conflists(ctx, c):
    def env_of(path):
        return ctx.subnet_env(path)[0]
    live = any(ctx.subnet_env(p)[0] is not None for p in ctx.subnet_files())
    st, summary, ev, fix = conf_dir_findings(ctx.loc.configs, env_of, flannel_live=live)
    c.set(st, summary, ["conf dir %s, in load order:" % ctx.loc.conf_dir] + ev, fix)


def check_plugins(ctx, c):
    nets = ctx.loc.networks()
    if not nets:
        return c.set("SKIP", "no network config loads, so no plugin is needed")
    missing, found = [], []
    for net in nets:
        for t in plugin_types(net):
            where = [os.path.join(d, t) for d in ctx.loc.bin_dirs]
            ok = [p for p in where if os.path.isfile(p) and os.access(p, os.X_OK)]
            if ok:
                found.append("%s: %s" % (t, ok[0]))
            else:
                present = [p for p in where if os.path.exists(p)]
                missing.append((net.name, t, "%s is not executable" % present[0] if present else
                                "not in %s" % ", ".join(ctx.loc.bin_dirs)))
    if not missing:
        return c.set("PASS", "every plugin the configs name is installed (%d)" % len(set(found)),
                     sorted(set(found)))
    c.set("FAIL", "; ".join("network %s needs %s: %s" % m for m in missing), sorted(set(found)))
    for _n, t, _why in missing:
        c.fix.append("install %s into %s (pycni: ./build.sh install %s), or add the dir holding "
                     "it to the runtime's plugin path (containerd bin_dir, cri-o plugin_dirs)"
                     % (t, ctx.loc.bin_dirs[0], ctx.loc.bin_dirs[0]))


def check_subnet_env(ctx, c):
    fl = flannel_networks(ctx.loc)
    files = ctx.subnet_files()
    if not fl and not ctx.loc.explicit_subnet and not os.path.exists(files[0]):
        return c.set("SKIP", "no flannel network configured and no %s" % files[0])
    running = process_running("flanneld")
    statuses = []
    for path in files:
        env, err = ctx.subnet_env(path)
        if err is not None:
            statuses.append("FAIL")
            c.evidence.append("%s: %s" % (path, err.msg))
            c.evidence.append("flanneld is %s on this node" % ("running" if running else "not running"))
            if err.kind == "absent":
                c.fix += ["start flanneld (kubectl -n kube-flannel get pods -o wide; kubectl -n "
                          "kube-flannel logs <the pod on this node>): it writes %s once it holds a "
                          "lease (node podCIDR assigned? RBAC?)" % path,
                          "on RHEL/EKS images look for /etc/flannel/subnet.env and point "
                          "subnetFile (or flanneld --subnet-file) at one path"]
            else:
                c.fix.append("restart flanneld so it rewrites %s (it writes FLANNEL_NETWORK, "
                             "FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ)" % path)
            continue
        outside = []
        for sub in env.subnets():
            s = ipaddress.ip_network(sub)
            if not any(s.version == ipaddress.ip_network(n).version and s.subnet_of(ipaddress.ip_network(n))
                       for n in env.all_networks()):
                outside.append(sub)
        c.evidence.append("%s: NETWORK %s SUBNET %s MTU %s IPMASQ %s" % (
            path, ",".join(env.all_networks()), ",".join(env.subnets()), env.mtu, env.ipmasq))
        if outside:
            statuses.append("FAIL")
            c.evidence.append("FLANNEL_SUBNET %s is outside FLANNEL_NETWORK %s"
                              % (",".join(outside), ",".join(env.all_networks())))
            c.fix.append("the lease and net-conf.json disagree: check the node's podCIDR "
                         "(kubectl get node -o jsonpath='{.spec.podCIDR}') against Network in "
                         "kube-flannel-cfg, then restart flanneld")
            continue
        statuses.append("PASS")
        dev = ctx.by_name.get("flannel.1")
        if dev is not None and env.subnet:
            want = str(ipaddress.ip_network(env.subnet).network_address)
            have = [a.address for a in ctx.addrs_of(dev.index)]
            c.evidence.append("flannel.1 holds %s (lease address %s)" % (", ".join(have) or "nothing", want))
            if want not in have:
                statuses[-1] = "WARN"
                c.fix.append("flannel.1 lacks the lease address %s: restart flanneld" % want)
    st = worst(statuses)
    text = {"PASS": "present and valid", "WARN": "valid, but flannel.1 does not match it",
            "FAIL": "missing or not usable"}[st]
    c.set(st, "subnet.env %s" % text)

