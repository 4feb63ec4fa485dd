//! memtrace as its own DaemonSet: the image built from the Containerfile (as `cargo xtask
//! image` builds it, from the binary under test, by a private dockerd, nothing pulled),
//! imported into containerd and run by runc with what deploy/daemonset.yaml asks for, read
//! from the YAML itself: exactly its capabilities, its read-only root and
//! read-only host mounts (the bundle directory bound from the test's containerd), host PID
//! namespace, a private cgroup namespace (as the kubelet gives), no privilege escalation, its
//! memory limit, its ConfigMap as /etc/memtrace/memtrace.toml and MEMTRACE_HOST_NAME. A
//! Kubernetes-shaped sibling container is OOM-killed; the event memtrace writes (read back
//! through `ctr run --log-uri file://...`) must name its pod and its host cgroup path.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use memtrace_tests::{
    ebpf_available, memtrace_bin, procs,
    runtimes::{Containerd, Dockerd, RuntimeCgroups, rootfs_with, run, runtime_lock, runtimes_available},
};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// deploy/daemonset.yaml's documents, through a real YAML parser (python3-yaml).
fn manifests() -> Vec<Value> {
    let out = run(Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(repo().join("deploy/daemonset.yaml")));
    serde_json::from_slice(&out.stdout).expect("daemonset.yaml as JSON")
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in daemonset.yaml"))
}

/// Kubernetes quantities the manifest uses (`256Mi`).
fn quantity(q: &str) -> u64 {
    let (n, mul) = match q {
        _ if q.ends_with("Mi") => (&q[..q.len() - 2], 1 << 20),
        _ if q.ends_with("Gi") => (&q[..q.len() - 2], 1 << 30),
        _ => (q, 1),
    };
    n.parse::<u64>().expect("quantity") * mul
}

fn cap_bits(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| match c.as_str() {
            "CAP_DAC_READ_SEARCH" => 2,
            "CAP_SYS_RESOURCE" => 24,
            "CAP_PERFMON" => 38,
            "CAP_BPF" => 39,
            other => panic!("{other}: add its number here"),
        })
        .fold(0, |acc, b| acc | 1u64 << b)
}

fn status_hex(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let v = s
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"));
    u64::from_str_radix(v.trim(), 16).expect("hex")
}

/// Lines of the container's log (stdout and stderr, as containerd's file logger writes them)
/// until `pred` matches one.
fn wait_log(log: &Path, timeout: Duration, mut pred: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| pred(l)) {
            return l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "not in memtrace's log within {timeout:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ctr images mount` of an image: the root filesystem runc gets, unmounted on drop.
struct ImageMount<'a> {
    ctrd: &'a Containerd,
    target: PathBuf,
}

impl Drop for ImageMount<'_> {
    fn drop(&mut self) {
        let _ = self
            .ctrd
            .ctr("k8s.io")
            .args(["images", "unmount", "--rm"])
            .arg(&self.target)
            .output();
    }
}

#[test]
fn memtrace_as_its_daemonset_reports_a_sibling_pod_kill() {
    let test = "memtrace_as_its_daemonset_reports_a_sibling_pod_kill";
    if !ebpf_available(test)
        || !runtimes_available(test, &["containerd", "ctr", "runc", "dockerd", "python3"])
    {
        return;
    }
    let docs = manifests();
    let ds = kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    let caps: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().expect("cap")))
        .collect();
    let node = "node-under-test";

    let _lock = runtime_lock();
    let cgroups = RuntimeCgroups::new("ds");
    let mut ctrd = Containerd::start();
    ctrd.track("k8s.io");
    let work = tempfile::Builder::new()
        .prefix("memtrace-ds-")
        .tempdir()
        .expect("tempdir");

    // The image, as `cargo xtask image` builds it, from the binary under test.
    let context = work.path().join("context");
    run(Command::new(repo().join("deploy/image/rootfs.sh"))
        .arg(memtrace_bin())
        .arg(context.join("rootfs")));
    let dockerd = Dockerd::start(&ctrd, &cgroups.path("docker"));
    let tag = format!("memtrace-test:{}", std::process::id());
    run(dockerd
        .docker()
        .args(["build", "--quiet", "-t", &tag, "-f"])
        .arg(repo().join("Containerfile"))
        .arg(&context));
    let inspect = |f: &str| {
        let out = run(dockerd.docker().args(["image", "inspect", "-f", f, &tag]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let entrypoint: Vec<Value> =
        serde_json::from_str(&inspect("{{json .Config.Entrypoint}}")).expect("entrypoint");
    eprintln!(
        "image {tag}: {} bytes (debug binary, debug info stripped)",
        inspect("{{.Size}}")
    );
    let tar = work.path().join("image.tar");
    run(dockerd.docker().args(["save", "-o"]).arg(&tar).arg(&tag));
    run(ctrd.ctr("k8s.io").args(["images", "import"]).arg(&tar));
    let rootfs = work.path().join("image-root");
    std::fs::create_dir(&rootfs).unwrap();
    run(ctrd
        .ctr("k8s.io")
        .args(["images", "mount", &format!("docker.io/library/{tag}")])
        .arg(&rootfs));
    let _mounted = ImageMount {
        ctrd: &ctrd,
        target: rootfs.clone(),
    };
    // The ConfigMap, mounted where the pod mounts it.
    let config = work.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let cm = kind(&docs, "ConfigMap");
    let toml = cm["data"]["memtrace.toml"]
        .as_str()
        .expect("memtrace.toml in the ConfigMap");
    std::fs::write(config.join("memtrace.toml"), toml).unwrap();

    // hostPath volumes by name; the bundle directory is the test containerd's.
    let mut mounts = vec![];
    for m in c["volumeMounts"].as_array().expect("volumeMounts") {
        let name = m["name"].as_str().unwrap();
        let dst = m["mountPath"].as_str().unwrap();
        assert_eq!(m["readOnly"], true, "{name} is mounted read-only");
        let vol = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap();
        let src = match (name, vol["hostPath"]["path"].as_str()) {
            ("config", _) => config.clone(),
            ("bundles", Some(p)) => {
                assert_eq!(p, dst, "the bundle dir is mounted where the host has it");
                ctrd.task_dir()
            }
            (_, Some(p)) => PathBuf::from(p),
            (_, None) => panic!("volume {name}: not a hostPath"),
        };
        mounts.push(json!({"destination": dst, "type": "bind", "source": src, "options": ["rbind", "ro"]}));
    }

    // containerd's default spec, shaped as the kubelet would from the pod spec.
    let out = run(ctrd.ctr("k8s.io").args(["oci", "spec"]));
    let mut spec: Value = serde_json::from_slice(&out.stdout).expect("oci spec");
    // The kubelet keeps the image's entrypoint and replaces its CMD with the pod's args.
    let mut args = entrypoint;
    args.extend(c["args"].as_array().expect("args").iter().cloned());
    let env_name = c["env"][0]["name"].as_str().expect("env");
    assert_eq!(env_name, "MEMTRACE_HOST_NAME");
    spec["process"]["args"] = json!(args);
    spec["process"]["env"] = json!(["PATH=/", format!("{env_name}={node}")]);
    spec["process"]["user"] = json!({"uid": sc["runAsUser"], "gid": 0});
    spec["process"]["noNewPrivileges"] = json!(sc["allowPrivilegeEscalation"] == false);
    spec["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": []});
    spec["root"] = json!({"path": rootfs, "readonly": sc["readOnlyRootFilesystem"] == true});
    spec["mounts"].as_array_mut().unwrap().extend(mounts);
    let ds_cgroup = cgroups.path("memtrace-daemonset");
    spec["linux"]["cgroupsPath"] = json!(ds_cgroup);
    let limit = quantity(c["resources"]["limits"]["memory"].as_str().expect("memory limit"));
    spec["linux"]["resources"]["memory"] = json!({"limit": limit});
    let host_pidns = format!("/proc/{}/ns/pid", std::process::id());
    let nss = spec["linux"]["namespaces"].as_array_mut().unwrap();
    for ns in nss.iter_mut().filter(|n| n["type"] == "pid") {
        ns["path"] = json!(host_pidns); // hostPID
    }
    nss.push(json!({"type": "cgroup"})); // private, as the kubelet makes it
    let spec_path = work.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    let log = work.path().join("memtrace.log");
    run(ctrd
        .ctr_run("k8s.io")
        .args(["-d", "--config"])
        .arg(&spec_path)
        .arg("--log-uri")
        .arg(format!("file://{}", log.display()))
        .arg("memtrace-daemonset"));
    wait_log(&log, Duration::from_secs(30), |l| {
        l.contains("memtrace: attached")
    });

    // It runs with exactly the manifest's capabilities, in the host's PID namespace and a
    // cgroup namespace of its own, under its memory limit.
    let tasks = run(ctrd.ctr("k8s.io").args(["task", "ls"]));
    let pid: u32 = String::from_utf8_lossy(&tasks.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("memtrace-daemonset"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("memtrace-daemonset task pid");
    for key in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(
            status_hex(pid, key),
            cap_bits(&caps),
            "{key} of memtrace in its container"
        );
    }
    let ns = |p: String| std::fs::read_link(p).expect("ns link");
    let me = std::process::id();
    assert_eq!(
        ns(format!("/proc/{pid}/ns/pid")),
        ns(format!("/proc/{me}/ns/pid"))
    );
    assert_ne!(
        ns(format!("/proc/{pid}/ns/cgroup")),
        ns(format!("/proc/{me}/ns/cgroup"))
    );

    // A sibling pod's container, the kubelet's systemd-driver shape, killed by its limit.
    let alloc_root = work.path().join("alloc-rootfs");
    std::fs::create_dir(&alloc_root).unwrap();
    rootfs_with(&alloc_root, &[&procs::alloc_bin()]);
    let id = "5d1a0c4e7f2b9a8c3e6d1f0a2b4c6e8f1a3c5e7f9b0d2f4a6c8e0b1d3f5a7c9e";
    let uid = "6f1e2d3c-4b5a-4978-8796-a5b4c3d2e1f0";
    let victim_cgroup = cgroups.path(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    ));
    run(ctrd
        .ctr_run("k8s.io")
        .args(["-d", "--memory-limit", "67108864", "--cgroup", &victim_cgroup])
        .args(["--annotation", "io.kubernetes.cri.sandbox-namespace=payments"])
        .args([
            "--annotation",
            "io.kubernetes.cri.sandbox-name=ledger-5f6d8-qz7km",
        ])
        .args(["--annotation", "io.kubernetes.cri.container-name=ledger"])
        .args(["--annotation", &format!("io.kubernetes.cri.sandbox-uid={uid}")])
        .arg("--rootfs")
        .arg(&alloc_root)
        .arg(id)
        .args(["/memtrace-alloc", "grow"]));
    let line = wait_log(&log, Duration::from_secs(30), |l| {
        l.starts_with('{')
            && serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["event.name"] == "memtrace.oom_kill" && v["memtrace.cgroup.path"] == victim_cgroup
            })
    });
    let ev: Value = serde_json::from_str(&line).unwrap();
    let field = |k: &str| {
        ev[k]
            .as_str()
            .unwrap_or_else(|| panic!("no {k} in {ev:#}"))
            .to_owned()
    };
    assert_eq!(field("k8s.namespace.name"), "payments");
    assert_eq!(field("k8s.pod.name"), "ledger-5f6d8-qz7km");
    assert_eq!(field("k8s.container.name"), "ledger");
    assert_eq!(field("k8s.pod.uid"), uid);
    assert_eq!(field("k8s.pod.qos_class"), "Burstable");
    assert_eq!(field("container.id"), id);
    assert_eq!(field("container.runtime.name"), "containerd");
    assert_eq!(field("memtrace.cgroup.path_source"), "kernel");
    assert_eq!(field("process.executable.name"), procs::ALLOC_COMM);
    assert_eq!(field("host.name"), node);

    ctrd.remove("k8s.io", id);
    ctrd.remove("k8s.io", "memtrace-daemonset");
    // Its own log (the non-JSON lines) has no error or warning: nothing it needs is missing.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('{') && (l.contains("ERROR") || l.contains("WARN")))
        .collect();
    assert!(bad.is_empty(), "memtrace complained in its container: {bad:#?}");
}
