"""The allocator over a real store in a temp dir: order, exclusions, requests, exhaustion."""

import os

import pytest

from cnilib.base import addr, errors
from cnilib.base.log import Log
from cnilib.ipam import allocator, config
from cnilib.ipam.store import INDEX_DIR, Store


def load(ranges=None, version="1.0.0", cni_args=None, **ipam):
    c = {"cniVersion": version, "name": "net1", "type": "host-local",
         "ipam": dict({"type": "host-local", "dataDir": "/unused"}, **ipam)}
    if ranges is not None:
        c["ipam"]["ranges"] = ranges
    for key in ("runtimeConfig", "args"):
        if key in ipam:
            c[key] = c["ipam"].pop(key)
    return config.load(c, cni_args, version)


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path), "net1", Log("host-local", {"PYCNI_LOG": "off"}))


def add(cfg, store, cid, ifname="eth0"):
    return [ip["address"] for ip in allocator.allocate(cfg, store, cid, ifname)]


def release(store, cid, ifname="eth0"):
    with store.lock():
        return store.release_by_id(cid, ifname)


def files(store):
    """The lease layout the Go plugin shares (the suite's index dir aside)."""
    return sorted(n for n in os.listdir(store.dir) if n != INDEX_DIR)


def index_of(store, cid, ifname="eth0"):
    try:
        with open(os.path.join(store.dir, INDEX_DIR, "%s@%s" % (cid, ifname))) as f:
            return f.read().split()
    except FileNotFoundError:
        return None


def v4(cidr="10.1.2.0/24", **kw):
    return [[dict({"subnet": cidr}, **kw)]]


def test_first_address_is_2_when_gateway_is_1(store):
    cfg = load(v4())
    assert add(cfg, store, "c1") == ["10.1.2.2/24"]
    assert add(cfg, store, "c2") == ["10.1.2.3/24"]
    res = allocator.allocate(cfg, store, "c3", "eth0")
    assert res == [{"address": "10.1.2.4/24", "gateway": "10.1.2.1"}]
    assert files(store) == ["10.1.2.2", "10.1.2.3", "10.1.2.4", "last_reserved_ip.0", "lock"]
    with open(os.path.join(store.dir, "10.1.2.2"), "rb") as f:
        assert f.read() == b"c1\r\neth0"         # the reference's bytes, no newline
    with open(os.path.join(store.dir, "last_reserved_ip.0"), "rb") as f:
        assert f.read() == b"10.1.2.4"


def test_round_robin_does_not_reuse_a_released_address(store):
    cfg = load(v4())
    add(cfg, store, "c1")
    add(cfg, store, "c2")
    assert release(store, "c1") == ["10.1.2.2"]
    assert add(cfg, store, "c3") == ["10.1.2.4/24"]


def test_wraps_around_and_skips_gateway(store):
    cfg = load(v4(rangeStart="10.1.2.1", rangeEnd="10.1.2.4"))
    assert [add(cfg, store, c)[0] for c in ("a", "b", "c")] == \
        ["10.1.2.2/24", "10.1.2.3/24", "10.1.2.4/24"]
    release(store, "a")
    release(store, "c")
    # after .4 (the end) the walk wraps to .1 (gateway, skipped) and takes .2
    assert add(cfg, store, "d") == ["10.1.2.2/24"]
    assert add(cfg, store, "e") == ["10.1.2.4/24"]


def test_network_broadcast_and_gateway_never_handed_out(store):
    cfg = load(v4("10.1.2.0/29", rangeStart="10.1.2.0", rangeEnd="10.1.2.7", gateway="10.1.2.3"))
    assert cfg.ranges[0].capacity() == 5
    got = [add(cfg, store, "c%d" % i)[0] for i in range(5)]
    assert got == ["10.1.2.1/29", "10.1.2.2/29", "10.1.2.4/29", "10.1.2.5/29", "10.1.2.6/29"]
    with pytest.raises(errors.Internal, match="5 of 5 addresses in use"):
        add(cfg, store, "c5")


def test_range_set_walks_its_ranges_in_order(store):
    cfg = load([[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.11"},
                 {"subnet": "10.1.3.0/24", "rangeStart": "10.1.3.20", "rangeEnd": "10.1.3.20"}]])
    got = [add(cfg, store, "c%d" % i)[0] for i in range(3)]
    assert got == ["10.1.2.10/24", "10.1.2.11/24", "10.1.3.20/24"]
    release(store, "c0")
    assert add(cfg, store, "c3") == ["10.1.2.10/24"]    # wrapped from the last range to the first


def test_last_reserved_outside_the_set_or_garbage_restarts_at_range_start(store):
    cfg = load(v4())
    store.create()
    for junk in (b"192.168.9.9", b"not an ip", b"", b"fd00::1"):
        with open(os.path.join(store.dir, "last_reserved_ip.0"), "wb") as f:
            f.write(junk)
        got = add(cfg, store, "c")
        assert got == ["10.1.2.2/24"]
        release(store, "c")


def test_candidates_cycle_once_from_after_last():
    cfg = load(v4(rangeStart="10.1.2.1", rangeEnd="10.1.2.5"))
    rs = cfg.ranges[0]
    last = addr.parse("10.1.2.3")
    assert [addr.fmt(4, n) for n in allocator.candidates(rs, last)] == \
        ["10.1.2.4", "10.1.2.5", "10.1.2.2", "10.1.2.3"]
    assert [addr.fmt(4, n) for n in allocator.candidates(rs, None)] == \
        ["10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5"]


def test_ipv6_and_its_last_address(store):
    cfg = load([[{"subnet": "fd00:1::/64", "rangeStart": "fd00:1::ffff:ffff:ffff:fffe"}]])
    assert add(cfg, store, "a") == ["fd00:1::ffff:ffff:ffff:fffe/64"]
    assert add(cfg, store, "b") == ["fd00:1::ffff:ffff:ffff:ffff/64"]   # no broadcast in IPv6
    with pytest.raises(errors.Internal) as ei:
        add(cfg, store, "c")
    assert ei.value.msg == ("failed to allocate for range 0: no IP addresses available in range "
                            "set: fd00:1::ffff:ffff:ffff:fffe-fd00:1::ffff:ffff:ffff:ffff "
                            "(2 of 2 addresses in use)")


def test_ipv6_default_first_address(store):
    cfg = load([[{"subnet": "fd00:1::/64"}]])
    res = allocator.allocate(cfg, store, "a", "eth0")
    assert res == [{"address": "fd00:1::2/64", "gateway": "fd00:1::1"}]
    assert "fd00:1::2" in files(store)


def test_dual_stack_one_address_per_set(store):
    cfg = load([[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00::/64"}]])
    assert add(cfg, store, "a") == ["10.1.2.2/24", "fd00::2/64"]
    assert "last_reserved_ip.1" in files(store)
    assert sorted(release(store, "a")) == ["10.1.2.2", "fd00::2"]
    assert files(store) == ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]


def test_exhaustion_names_the_range_and_the_count(store):
    cfg = load(v4("10.1.2.0/30"))
    add(cfg, store, "a")
    assert "  warning: range set 0 (10.1.2.1-10.1.2.2) is 100% full: 1 of 1 addresses in use" \
        in store.log.lines
    with pytest.raises(errors.Internal) as ei:
        add(cfg, store, "b")
    e = ei.value
    assert e.msg == ("failed to allocate for range 0: no IP addresses available in range set: "
                     "10.1.2.1-10.1.2.2 (1 of 1 addresses in use)")
    assert store.dir in e.details and "GC" in e.details
    assert files(store) == ["10.1.2.2", "last_reserved_ip.0", "lock"]


def test_failure_in_a_later_set_undoes_the_earlier_ones(store):
    cfg = load([[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.9.0.0/30"}]])
    add(cfg, store, "a")                    # takes 10.9.0.2, the only one
    with pytest.raises(errors.Internal, match="for range 1"):
        add(cfg, store, "b")
    assert not [f for f in files(store) if f.startswith("10.1.2.") and f != "10.1.2.2"]


def test_duplicate_add_is_refused(store):
    cfg = load(v4())
    add(cfg, store, "a")
    with pytest.raises(errors.Internal) as ei:
        add(cfg, store, "a")
    assert ei.value.msg == ("failed to allocate for range 0: 10.1.2.2 has been allocated to a, "
                            "duplicate allocation is not allowed")
    assert add(cfg, store, "a", "eth1") == ["10.1.2.3/24"]     # another interface is another attachment


def test_duplicate_add_is_found_through_the_index_alone(store, monkeypatch):
    """ADD reads no lease but the ones its index entry names."""
    cfg = load([[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00::/64"}]])
    for i in range(20):
        add(cfg, store, "c%d" % i)
    assert index_of(store, "c7") == ["10.1.2.9", "fd00::9"]
    read = []
    real = store.owner
    monkeypatch.setattr(store, "owner", lambda name: read.append(name) or real(name))
    monkeypatch.setattr(store, "scan", lambda sweep=True: pytest.fail("ADD read every lease"))
    with pytest.raises(errors.Internal, match="10.1.2.9 has been allocated to c7"):
        add(cfg, store, "c7")
    assert read == ["10.1.2.9", "fd00::9"]
    add(cfg, store, "new")
    assert read == ["10.1.2.9", "fd00::9"]


def test_index_is_only_a_hint(store):
    cfg = load(v4())
    add(cfg, store, "a")
    # the lease went elsewhere behind the index's back (the Go plugin's DEL, say)
    os.unlink(os.path.join(store.dir, "10.1.2.2"))
    with open(os.path.join(store.dir, "10.1.2.2"), "wb") as f:
        f.write(b"b\r\neth0")
    assert add(cfg, store, "a") == ["10.1.2.3/24"]
    assert index_of(store, "a") == ["10.1.2.3"]
    # a lease with no index entry (the Go plugin's ADD, an older pycni) is freed by DEL
    with open(os.path.join(store.dir, "10.1.2.40"), "wb") as f:
        f.write(b"go\r\neth0")
    assert release(store, "go") == ["10.1.2.40"]
    assert sorted(release(store, "a")) == ["10.1.2.3"] and index_of(store, "a") is None


def test_legacy_lease_counts_as_a_duplicate(store):
    cfg = load(v4())
    store.create()
    with open(os.path.join(store.dir, "10.1.2.9"), "wb") as f:
        f.write(b"old")
    with pytest.raises(errors.Internal, match="10.1.2.9 has been allocated to old"):
        add(cfg, store, "old")


def test_leases_the_index_does_not_account_for_are_all_read(store, monkeypatch):
    """A lease with no index entry (the Go plugin's, an older pycni's, or a
    crash between lease and entry) sends ADD back to reading every lease."""
    cfg = load(v4())
    add(cfg, store, "a")
    with open(os.path.join(store.dir, "10.1.2.40"), "wb") as f:
        f.write(b"go\r\neth0")
    scans = []
    real = store.scan
    monkeypatch.setattr(store, "scan", lambda sweep=True: scans.append(1) or real(sweep))
    with pytest.raises(errors.Internal, match="10.1.2.40 has been allocated to go"):
        add(cfg, store, "go")
    assert scans == [1]
    assert release(store, "go") == ["10.1.2.40"]          # DEL reads every lease, always
    del scans[:]
    assert add(cfg, store, "b") == ["10.1.2.3/24"] and scans == []    # accounted for again


# --------------------------------------------------------------- requested addresses
def test_requested_address_from_each_source(store):
    cfg = load(v4(), cni_args={"IP": "10.1.2.50"})
    assert add(cfg, store, "a") == ["10.1.2.50/24"]
    with open(os.path.join(store.dir, "last_reserved_ip.0")) as f:
        assert f.read() == "10.1.2.50"              # requests move round robin too, as in Go
    cfg = load(v4(), runtimeConfig={"ips": ["10.1.2.60/24"]})
    assert add(cfg, store, "b") == ["10.1.2.60/24"]
    cfg = load(v4(), args={"cni": {"ips": ["10.1.2.70"]}})
    assert add(cfg, store, "c") == ["10.1.2.70/24"]


def test_requested_dual_stack_and_dynamic_mix(store):
    cfg = load([[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00::/64"}]],
               runtimeConfig={"ips": ["fd00::99"]})
    assert add(cfg, store, "a") == ["10.1.2.2/24", "fd00::99/64"]


def test_requested_taken_names_address_range_and_holder(store):
    cfg = load(v4(), runtimeConfig={"ips": ["10.1.2.50"]})
    add(cfg, store, "a")
    with pytest.raises(errors.Internal) as ei:
        add(cfg, store, "b")
    assert ei.value.msg == ("failed to allocate for range 0: requested IP address 10.1.2.50 is not "
                            "available in range set 10.1.2.1-10.1.2.254 (held by container a "
                            "interface eth0)")
    with pytest.raises(errors.Internal, match="not available"):
        add(cfg, store, "a")                  # even for its own holder, as in the reference


def test_requested_outside_every_range_writes_nothing(store):
    cfg = load([[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00::/64"}]],
               runtimeConfig={"ips": ["192.168.27.56"]})
    with pytest.raises(errors.InvalidConfig) as ei:
        add(cfg, store, "a")
    assert ei.value.msg == ("failed to allocate all requested IPs: 192.168.27.56 is not in any "
                            "range set (0: 10.1.2.1-10.1.2.254; 1: fd00::1-fd00::ffff:ffff:ffff:ffff)")
    assert not os.path.exists(store.dir)


@pytest.mark.parametrize("ip,msg", [
    ("10.1.2.1", "failed to allocate for range 0: requested ip 10.1.2.1 is subnet's gateway"),
    ("10.1.2.0", "is not in any range set"),          # .0 is before the default rangeStart
])
def test_requested_gateway_or_network(store, ip, msg):
    cfg = load(v4(), runtimeConfig={"ips": [ip]})
    with pytest.raises(errors.InvalidConfig, match=msg):
        add(cfg, store, "a")
    assert not os.path.exists(store.dir)


def test_requested_network_address_inside_an_explicit_range(store):
    cfg = load(v4(rangeStart="10.1.2.0"), runtimeConfig={"ips": ["10.1.2.0"]})
    with pytest.raises(errors.InvalidConfig, match="is a network, broadcast or gateway address"):
        add(cfg, store, "a")


def test_a_gateway_inside_another_range_of_the_set_is_skipped(store):
    cfg = load([[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.1", "rangeEnd": "10.1.2.3",
                  "gateway": "10.1.2.5"},
                 {"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.4", "rangeEnd": "10.1.2.6",
                  "gateway": "10.1.2.2"}]])
    assert cfg.ranges[0].capacity() == 4
    got = [add(cfg, store, "c%d" % i)[0] for i in range(4)]
    assert got == ["10.1.2.1/24", "10.1.2.3/24", "10.1.2.4/24", "10.1.2.6/24"]


def test_two_requests_in_one_set(store):
    cfg = load(v4(), runtimeConfig={"ips": ["10.1.2.5", "10.1.2.6"]})
    with pytest.raises(errors.InvalidConfig,
                       match="10.1.2.5 and 10.1.2.6 both fall in range set 0"):
        add(cfg, store, "a")


# --------------------------------------------------------------- torn files
@pytest.mark.parametrize("content", [b"", b"  \r\n", b"\x00\x00\x00\x00\x00\x00\x00\x00", b"\xff\xfe"])
def test_torn_lease_is_reclaimed_and_logged(store, content):
    cfg = load(v4())
    store.create()
    with open(os.path.join(store.dir, "10.1.2.2"), "wb") as f:
        f.write(content)
    assert add(cfg, store, "a") == ["10.1.2.2/24"]
    with open(os.path.join(store.dir, "10.1.2.2"), "rb") as f:
        assert f.read() == b"a\r\neth0"
    assert any("reclaimed" in line and "10.1.2.2" in line for line in store.log.lines)


def test_torn_lease_on_a_requested_address(store):
    cfg = load(v4(), runtimeConfig={"ips": ["10.1.2.9"]})
    store.create()
    open(os.path.join(store.dir, "10.1.2.9"), "wb").close()
    assert add(cfg, store, "a") == ["10.1.2.9/24"]


def test_torn_files_do_not_count_as_in_use(store):
    cfg = load(v4("10.1.2.0/30"))
    store.create()
    open(os.path.join(store.dir, "10.1.2.2"), "wb").close()
    assert add(cfg, store, "a") == ["10.1.2.2/30"]


def test_entry_that_is_not_a_file_is_skipped(store):
    cfg = load(v4())
    store.create()
    os.mkdir(os.path.join(store.dir, "10.1.2.2"))
    os.symlink("/etc/passwd", os.path.join(store.dir, "10.1.2.3"))
    assert add(cfg, store, "a") == ["10.1.2.4/24"]
    assert os.path.islink(os.path.join(store.dir, "10.1.2.3"))


def test_dead_writers_temp_files_are_swept(store):
    cfg = load(v4())
    store.create()
    tmp = os.path.join(store.dir, ".pycni-tmp-999-abcd")
    with open(tmp, "wb") as f:
        f.write(b"dead\r\neth0")
    add(cfg, store, "a")
    assert not os.path.exists(tmp)


def test_another_writer_is_noticed_even_when_the_counts_match(store):
    """The Go plugin's DEL of our pod and its ADD of another leave one lease
    and one (stale) index entry: the lease dir's mtime, stamped into the
    index dir by every ADD/DEL/GC here, tells ADD to read every lease."""
    cfg = load(v4())
    add(cfg, store, "ours")
    os.unlink(os.path.join(store.dir, "10.1.2.2"))              # Go's DEL
    with open(os.path.join(store.dir, "10.1.2.3"), "wb") as f:  # Go's ADD
        f.write(b"go\r\neth0")
    st = os.stat(store.dir)
    os.utime(os.path.join(store.dir, INDEX_DIR), ns=(st.st_mtime_ns - 1, st.st_mtime_ns - 1))
    assert not store.index_accounts_for(1, 1)
    with pytest.raises(errors.Internal, match="10.1.2.3 has been allocated to go"):
        add(cfg, store, "go")
