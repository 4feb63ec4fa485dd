#!/usr/bin/env python3
"""Writes the fuzz seed corpora (fuzz/seeds/<target>/): real files from a 6.18 host where a
target reads kernel files, hand-made records where it reads the ring buffers. Re-run it on a
host to refresh the kernel files: python3 fuzz/seeds/make_seeds.py"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def copy(target, name, path):
    try:
        with open(path, "rb") as f:
            put(target, name, f.read())
    except OSError as e:
        print(f"skipped {path}: {e}")


# OomVictimRecord (memtrace-common/src/oom.rs), little-endian repr(C), 280 bytes: the
# fields, then the victim's and the OOM memcg's MEMCG_STAT_ITEMS (12) counters in pages
# (u32::MAX: not counted by this kernel). A unit test in memtrace (fuzz_seeds_are_whole_records)
# fails when the record changes size and these seeds were not rewritten.
SRC_TP_BTF, SRC_TRACEPOINT, SRC_RAW_TP = 1 << 0, 1 << 1, 1 << 12
HAS_ALL = sum(1 << b for b in (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13))
VICTIM_EXITING, READ_ERROR = 1 << 14, 1 << 15
HAS_STATS = (1 << 16) | (1 << 17)
STAT_ABSENT = 0xFFFF_FFFF
# anon, file, shmem, active_file, inactive_file, slab_r, slab_u, kernel_stack, pagetables,
# swap, kmem, unevictable: an anon-filled cgroup at its limit.
STATS = [16_100, 200, 0, 50, 150, 10, 20, 4, 44, 0, STAT_ABSENT, 0]


def victim(flags, anon_kb=65_000, adj=0, pid=1001, tgid=1000, trigger=1000, limit=16384,
           stats=STATS):
    r = struct.pack("<II", 1, flags)
    r += struct.pack(
        "<14Q", 123_456_789, 4242, 4242, 70_000, anon_kb, 1_600, 0, 0, 172,
        16_384, limit, 4242, 16_384, limit)
    r += struct.pack("<II", 0, 0)
    r += struct.pack("<IIIiII", pid, tgid, 0, adj, trigger, trigger)
    r += b"memtrace-alloc\0\0" + b"exactly16bytes!!"
    r += struct.pack("<12I", *stats) + struct.pack("<12I", *stats)
    assert len(r) == 280
    return r


def context(flags=2 | 4, memcg=4242, chosen=1000):
    r = struct.pack("<IIQQQqIiIIII", 3, flags, 123_456_000, memcg, 16_384, 16_000, 0xcc0, 0, 3,
                    chosen + 1, chosen, chosen)
    assert len(r) == 64
    return r


put("oom_record", "tp_btf", victim(SRC_TP_BTF | HAS_ALL | HAS_STATS))
put("oom_record", "stats_all_absent", victim(SRC_TP_BTF | HAS_ALL | HAS_STATS, stats=[STAT_ABSENT] * 12))
put("oom_record", "raw_tp_bystander", victim(SRC_RAW_TP | HAS_ALL, adj=1000, trigger=7))
put("oom_record", "tracepoint_pid_only", victim(SRC_TRACEPOINT))
put("oom_record", "exiting_read_error", victim(SRC_TP_BTF | HAS_ALL | VICTIM_EXITING | READ_ERROR))
put("oom_record", "adj_min_unlimited", victim(SRC_TP_BTF | HAS_ALL, adj=-1000, limit=(1 << 63) // 4096))
put("oom_record", "context_then_victim", context() + victim(SRC_TP_BTF | HAS_ALL))
put("oom_record", "global_context_two_victims",
    context(flags=1) + victim(SRC_TP_BTF | HAS_ALL) + victim(SRC_TP_BTF | HAS_ALL, pid=1002))

# CgroupMkdirRecord (memtrace-common/src/cgroup.rs), 280 bytes.
def mkdir(path, flags=0, root=4, level=1, cid=107285):
    p = path.encode()[:256].ljust(256, b"\0")
    return struct.pack("<IIIIQ", 2, flags, root, level, cid) + p


put("cgroup_record", "simple", mkdir("/memtrace-test-a"))
put("cgroup_record", "k8s", mkdir(
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_7a8b_9c0d_112233445566.slice",
    level=3))
put("cgroup_record", "truncated", mkdir("/" + "x" * 255, flags=1))

# Kernel text files.
CG = "/sys/fs/cgroup/memory"
for f in ("memory.stat", "memory.oom_control", "memory.limit_in_bytes", "memory.usage_in_bytes"):
    copy("cgroup_stats", f"v1-{f}", f"{CG}/{f}")
put("cgroup_stats", "v2-memory.max", "max\n")
put("cgroup_stats", "v2-memory.max-number", "67108864\n")
put("cgroup_stats", "v1-unlimited", "9223372036854771712\n")
put("cgroup_stats", "v2-memory.events", "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n")
put("cgroup_stats", "v2-memory.stat",
    "anon 66904064\nfile 0\nkernel 204800\nkernel_stack 16384\npagetables 180224\nsock 0\n"
    "shmem 0\nfile_mapped 0\nfile_dirty 0\nslab 8192\ninactive_anon 0\nactive_anon 66904064\n"
    "inactive_file 0\nactive_file 0\nunevictable 0\npgfault 16500\n")
put("cgroup_stats", "pressure",
    "some avg10=1.23 avg60=0.45 avg300=0.06 total=123456\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
put("cgroup_stats", "pressure-some-only", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")

UID = "1a2b3c4d-5e6f-7a8b-9c0d-112233445566"
CID = "0123456789abcdef" * 4
for i, p in enumerate([
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope",
    f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope/init.scope",
    f"/kubepods/besteffort/pod{UID}/{CID}",
    f"/kubepods/burstable/pod{UID}/crio-conmon-{CID}",
    f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID.replace('-', '_')}.slice/docker-{CID}.scope",
    f"/docker/{CID}",
    "/system.slice/nginx.service",
    "/memtrace-test-default-1-0",
]):
    put("cgroup_path", f"path{i}", p)

put("oci_config", "containerd", '{"ociVersion":"1.1.0","process":{"args":["sh"]},"annotations":{'
    '"io.kubernetes.cri.sandbox-namespace":"default","io.kubernetes.cri.sandbox-name":"web-0",'
    '"io.kubernetes.cri.container-name":"app","io.kubernetes.cri.container-type":"container"}}')
put("oci_config", "crio", '{"annotations":{"io.kubernetes.pod.namespace":"kube-system",'
    '"io.kubernetes.pod.name":"coredns-1","io.kubernetes.container.name":"coredns"}}')
put("oci_config", "no-annotations", '{"ociVersion":"1.0.2","root":{"path":"rootfs"}}')

copy("mountinfo", "self", "/proc/self/mountinfo")
put("mountinfo", "v2", "1 0 0:1 / / rw - ext4 /dev/vda rw\n"
    "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n")
put("mountinfo", "escaped", "36 23 0:32 / /sys/fs/cgroup/mem\\040ory rw - cgroup cgroup rw,memory\n")

copy("proc_cgroup", "self", "/proc/self/cgroup")
put("proc_cgroup", "v2", "0::/system.slice/nginx.service\n")

T = "/sys/kernel/tracing/events"
for ev in ("oom/mark_victim", "cgroup/cgroup_mkdir", "oom/oom_score_adj_update", "sched/sched_switch"):
    copy("tracefs_format", ev.replace("/", "-"), f"{T}/{ev}/format")

for i, args in enumerate([
    ["watch"],
    ["watch", "--output", "json", "--variant", "oom_victim=tp_btf", "--oom-ring-bytes", "4096"],
    ["watch", "--ws-alert-ratio", "0.5", "--oci-bundle", "/run/x/{id}/config.json", "--exit-after", "3"],
    ["-vv", "probes", "-o", "json"],
    ["watch", "--variant", "cgroup_mkdir=tracepoint", "--variant", "oom_context=kprobe"],
    ["--help"],
]):
    put("cli", f"args{i}", b"\0".join(a.encode() for a in args))
