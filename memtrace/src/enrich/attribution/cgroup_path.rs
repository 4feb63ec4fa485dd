//! Pod, QoS class, runtime and container id from a cgroup path alone: pure string work, no
//! filesystem.

use super::{Attribution, QosClass, Runtime};

/// Parse a cgroup path (relative to the hierarchy root). Pure and total: unknown or
/// malformed parts just leave the corresponding fields `None`.
pub fn parse_cgroup_path(path: &str) -> Attribution {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut out = Attribution {
        systemd_unit: segs
            .last()
            .filter(|s| s.ends_with(".service") || s.ends_with(".scope"))
            .map(|s| s.to_string()),
        ..Attribution::default()
    };
    // Scan from the leaf so the innermost pod wins (a kind node nested in a host pod).
    let pod = (0..segs.len()).rev().find_map(|i| {
        systemd_pod(segs[i])
            .or_else(|| cgroupfs_pod(&segs[..i], segs[i]))
            .map(|p| (i, p))
    });
    let ctr = match pod {
        Some((i, (qos, uid))) => {
            out.qos = Some(qos);
            out.pod_uid = uid;
            // The container is the pod's direct child; deeper levels are its own sub-cgroups.
            segs.get(i + 1).and_then(|s| {
                runtime_scope(s).or_else(|| is_lower_hex(s, 64).then_some((Runtime::Unknown, Some(*s))))
            })
        }
        // Outside Kubernetes only trust well-formed ids: `docker/<id>` or `<runtime>-<id>.scope`.
        None => (0..segs.len()).rev().find_map(|i| {
            if i > 0 && segs[i - 1] == "docker" && is_lower_hex(segs[i], 64) {
                return Some((Runtime::Docker, Some(segs[i])));
            }
            runtime_scope(segs[i]).filter(|(_, id)| id.is_some())
        }),
    };
    if let Some((runtime, id)) = ctr {
        out.runtime = Some(runtime);
        out.container_id = id.map(str::to_owned);
    }
    out
}

/// systemd driver: `[<prefix>-]kubepods[-burstable|-besteffort]-pod<uid_with_underscores>.slice`.
fn systemd_pod(seg: &str) -> Option<(QosClass, Option<String>)> {
    let stem = seg.strip_suffix(".slice")?;
    let at = stem.rfind("kubepods-")?;
    // Nested slices prefix their parent's name (`kubelet-kubepods-...`), so allow a `-` boundary.
    if at > 0 && !stem[..at].ends_with('-') {
        return None;
    }
    let rest = &stem[at + "kubepods-".len()..];
    // Guaranteed pods have no QoS level in the hierarchy.
    let (qos, rest) = match (rest.strip_prefix("burstable-"), rest.strip_prefix("besteffort-")) {
        (Some(r), _) => (QosClass::Burstable, r),
        (_, Some(r)) => (QosClass::BestEffort, r),
        _ => (QosClass::Guaranteed, rest),
    };
    let uid = rest.strip_prefix("pod")?;
    // systemd reserves `-` as the slice hierarchy separator, hence the `_` in the uid.
    Some((qos, pod_uid(&uid.replace('_', "-"))))
}

/// cgroupfs driver: `kubepods/[burstable|besteffort/]pod<uid>`.
fn cgroupfs_pod(parents: &[&str], seg: &str) -> Option<(QosClass, Option<String>)> {
    let uid = seg.strip_prefix("pod")?;
    let qos = match parents {
        [.., "kubepods"] => QosClass::Guaranteed,
        [.., "kubepods", "burstable"] => QosClass::Burstable,
        [.., "kubepods", "besteffort"] => QosClass::BestEffort,
        _ => return None,
    };
    Some((qos, pod_uid(uid)))
}

/// `<runtime>-<id>[.scope]` (CRI-O under cgroupfs omits `.scope`).
/// A `None` id means conmon or a malformed id: the runtime is still known.
fn runtime_scope(seg: &str) -> Option<(Runtime, Option<&str>)> {
    let stem = seg.strip_suffix(".scope").unwrap_or(seg);
    // `crio-conmon-<id>` (CRI-O's monitor, not the container) matches `crio-` but its
    // "id" `conmon-<id>` never validates, so it yields CRI-O without a container id.
    [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
    ]
    .into_iter()
    .find_map(|(prefix, rt)| {
        stem.strip_prefix(prefix)
            .map(|id| (rt, is_lower_hex(id, 64).then_some(id)))
    })
}

/// Pod UIDs are UUIDs, except static pods whose UID is a 32-hex hash of the manifest.
fn pod_uid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => is_lower_hex_digit(c),
        });
    (uuid || is_lower_hex(s, 32)).then(|| s.to_owned())
}

/// Lowercase only: runtimes and the kubelet never emit uppercase, so it signals garbage.
pub(super) fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(is_lower_hex_digit)
}

fn is_lower_hex_digit(c: u8) -> bool {
    c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "4f9a1c2b3d4e5f60718293a4b5c6d7e8f9012345678901234567890abcdef012";
    const UID: &str = "1a2b3c4d-5e6f-7a8b-9c0d-112233445566";
    const UID_: &str = "1a2b3c4d_5e6f_7a8b_9c0d_112233445566";

    /// Parses a path template and renders `pod_uid qos runtime container_id` ("-" = None),
    /// with `{UID}` (dashed), `{UID_}` (systemd-escaped) and `{CID}` standing for the ids.
    fn summary(template: &str) -> String {
        let path = template
            .replace("{UID_}", UID_)
            .replace("{UID}", UID)
            .replace("{CID}", CID);
        let a = parse_cgroup_path(&path);
        assert_eq!(a.names, None);
        let show =
            |v: Option<String>| v.map_or("-".into(), |v| v.replace(UID, "{UID}").replace(CID, "{CID}"));
        let qos = a.qos.map(|q| format!("{q:?}"));
        let runtime = a.runtime.map(|r| format!("{r:?}"));
        [a.pod_uid, qos, runtime, a.container_id].map(show).join(" ")
    }

    #[test]
    fn systemd_qos_and_runtime_matrix() {
        let qos_dirs = [
            (
                "kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
                "Burstable",
            ),
            (
                "kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice",
                "BestEffort",
            ),
            ("kubepods-pod{UID_}.slice", "Guaranteed"),
        ];
        let runtimes = [
            ("cri-containerd", "Containerd"),
            ("crio", "CriO"),
            ("docker", "Docker"),
        ];
        for (dir, qos) in qos_dirs {
            for (prefix, rt) in runtimes {
                let path = format!("/kubepods.slice/{dir}/{prefix}-{{CID}}.scope");
                assert_eq!(summary(&path), format!("{{UID}} {qos} {rt} {{CID}}"), "{path}");
            }
            // Pod-level cgroup, with or without leading/trailing slashes.
            let want = format!("{{UID}} {qos} - -");
            assert_eq!(summary(&format!("/kubepods.slice/{dir}")), want);
            assert_eq!(summary(&format!("kubepods.slice/{dir}/")), want);
        }
    }

    /// `path => pod_uid qos runtime container_id`; `#` lines are comments.
    const CASES: &str = r"
        # conmon is CRI-O's monitor process, not the container
        /kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope => {UID} Guaranteed CriO -
        # sub-cgroups inside a container still belong to it
        /kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope/init.scope => {UID} Guaranteed CriO {CID}
        # cgroupfs driver
        /kubepods/burstable/pod{UID}/{CID} => {UID} Burstable Unknown {CID}
        kubepods/besteffort/pod{UID}/{CID} => {UID} BestEffort Unknown {CID}
        /kubepods/pod{UID}/{CID} => {UID} Guaranteed Unknown {CID}
        /kubepods/pod{UID} => {UID} Guaranteed - -
        /kubepods/burstable/pod{UID}/crio-{CID} => {UID} Burstable CriO {CID}
        /kubepods/burstable/pod{UID}/crio-conmon-{CID} => {UID} Burstable CriO -
        # underscores are a systemd-only escape
        /kubepods/pod{UID_}/{CID} => - Guaranteed Unknown {CID}
        # kind nodes: systemd slices inherit the parent's name prefix, cgroupfs just nests
        /kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope => {UID} BestEffort Containerd {CID}
        /kubelet/kubepods/burstable/pod{UID}/{CID} => {UID} Burstable Unknown {CID}
        # a kind node inside a host pod: the innermost pod wins
        /kubepods/podffffffff-0000-1111-2222-333333333333/{CID}/kubelet/kubepods/pod{UID} => {UID} Guaranteed - -
        # static pods have a 32-hex hash as UID
        /kubepods.slice/kubepods-pod6b0b4d1e1c4c0b2a8c4f9b4e3e5d1c7a.slice => 6b0b4d1e1c4c0b2a8c4f9b4e3e5d1c7a Guaranteed - -
        # plain docker, cgroupfs and systemd
        /docker/{CID} => - - Docker {CID}
        system.slice/docker-{CID}.scope => - - Docker {CID}
        # not containers
        /system.slice/docker-{CID}.mount => - - - -
        /system.slice/nginx.service => - - - -
        /user.slice/user-1000.slice/session-3.scope => - - - -
        /kubepods.slice/kubepods-burstable.slice => - - - -
        /system.slice/notkubepods-pod{UID_}.slice => - - - -
        /burstable/pod{UID}/{CID} => - - - -
        /system.slice/docker-deadbeef.scope => - - - -
        /system.slice/crio-conmon-{CID}.scope => - - - -
        / => - - - -
        # malformed ids: the runtime is still known, the id is not
        /kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}0.scope => {UID} Guaranteed Containerd -
        /kubepods.slice/kubepods-pod{UID_}.slice/docker-ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789.scope => {UID} Guaranteed Docker -
        /kubepods/pod{UID}/abcdef0123456789abcdef0123456789abcdef0123456789abcdef012345678g => {UID} Guaranteed - -
        /docker/{CID}00 => - - - -
        /kubepods.slice/kubepods-pod1A2B3C4D_5E6F_7A8B_9C0D_112233445566.slice/crio-{CID}.scope => - Guaranteed CriO {CID}
        /kubepods/burstable/pod{UID}0/{CID} => - Burstable Unknown {CID}
        /kubepods/burstable/pod1a2b3c4d5e6f7a8b9c0d112233445566ffff/{CID} => - Burstable Unknown {CID}
    ";

    #[test]
    fn path_table() {
        let lines = CASES
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        for line in lines {
            let (path, want) = line.split_once(" => ").unwrap();
            assert_eq!(summary(path), want, "{path}");
        }
    }

    #[test]
    fn systemd_unit_is_the_leaf() {
        let unit = |p: &str| parse_cgroup_path(p).systemd_unit;
        assert_eq!(
            unit("/system.slice/nginx.service").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            unit("/user.slice/session-3.scope").as_deref(),
            Some("session-3.scope")
        );
        let scope = format!("cri-containerd-{CID}.scope");
        assert_eq!(unit(&format!("/kubepods/pod{UID}/{scope}")), Some(scope));
        assert_eq!(unit("/user.slice"), None);
        assert_eq!(unit(""), None);
    }

    #[test]
    fn garbage_never_panics() {
        let long = "kubepods-pod".repeat(50_000);
        for s in [
            "",
            "////",
            "\0",
            "ü/€/🦀",
            ".slice",
            "-pod.slice",
            "kubepods-.slice",
            &long,
        ] {
            let _ = parse_cgroup_path(s);
        }
        // Cheap deterministic fuzz over tokens that steer the parser into its branches.
        let toks = [
            "/",
            "kubepods",
            "-",
            "_",
            "pod",
            ".slice",
            ".scope",
            "burstable",
            "crio-",
        ];
        let toks = [&toks[..], &["docker", "docker-", "é", CID, UID, UID_]].concat();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut s = String::new();
            for _ in 0..x % 12 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push_str(toks[(x % toks.len() as u64) as usize]);
            }
            let _ = parse_cgroup_path(&s);
        }
    }

    #[test]
    fn serializes_with_kubernetes_spelling() {
        let a = parse_cgroup_path(&format!("/kubepods/besteffort/pod{UID}/crio-{CID}"));
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["qos"], "BestEffort");
        assert_eq!(v["runtime"], "crio");
        assert!(v["names"].is_null());
    }
}
