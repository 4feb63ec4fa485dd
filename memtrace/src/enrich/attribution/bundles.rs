//! Names from the engines' OCI bundles (`config.json`): Kubernetes names from the CRI
//! annotations, and plain containerd tasks found by their cgroup path.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::cgroup_path::is_lower_hex;
use super::{K8sNames, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("malformed OCI config JSON")]
    Json(#[source] serde_json::Error),
    #[error("malformed OCI config {}", path.display())]
    JsonAt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot read OCI config {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid container id {0:?} (want 64 lowercase hex chars)")]
    InvalidContainerId(String),
    #[error("{} is larger than {limit} bytes: not read", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
}

/// No engine writes a config this large; a bigger file is not read (the event path waits on it).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Reads a small engine/OCI config file. `Ok(None)` when it does not exist.
pub(crate) fn read_config(path: &Path) -> Result<Option<Vec<u8>>, OciError> {
    use std::io::Read as _;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => return Ok(None),
        Err(source) => {
            return Err(OciError::Io {
                path: path.into(),
                source,
            });
        }
    };
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| OciError::Io {
            path: path.into(),
            source,
        })?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(OciError::TooLarge {
            path: path.into(),
            limit: MAX_CONFIG_BYTES,
        });
    }
    Ok(Some(bytes))
}

/// Only what memtrace reads is modelled: serde skips the rest of a large config without
/// allocating.
#[derive(Deserialize)]
struct OciConfig {
    annotations: Option<HashMap<String, String>>,
    linux: Option<OciLinux>,
}

#[derive(Deserialize)]
struct OciLinux {
    #[serde(rename = "cgroupsPath")]
    cgroups_path: Option<String>,
}

/// A containerd task found from its cgroup: `ctr run` and other plain containerd clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerdTask {
    pub namespace: String,
    pub id: String,
    /// nerdctl's `nerdctl/name` annotation (the name its user typed), when there is one.
    pub name: Option<String>,
}

/// Read Kubernetes names from an OCI runtime `config.json`. Missing annotations yield
/// all-`None` names (e.g. a non-Kubernetes container), not an error.
pub fn names_from_oci_config(json: &[u8]) -> Result<K8sNames, OciError> {
    parse_names(json).map_err(OciError::Json)
}

fn parse_names(json: &[u8]) -> Result<K8sNames, serde_json::Error> {
    let ann = serde_json::from_slice::<OciConfig>(json)?
        .annotations
        .unwrap_or_default();
    // containerd CRI key first, then CRI-O / dockershim key.
    let pick = |keys: [&str; 2]| {
        keys.into_iter()
            .find_map(|k| ann.get(k).filter(|v| !v.is_empty()).cloned())
    };
    Ok(K8sNames {
        namespace: pick([
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ]),
        pod: pick(["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]),
        container: pick(["io.kubernetes.cri.container-name", "io.kubernetes.container.name"]),
    })
}

/// Path patterns of OCI `config.json` files; a component equal to [`BundleRoots::ID_SLOT`]
/// is replaced by the container id. Public so callers can re-root (e.g. under `/host`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleRoots(pub Vec<PathBuf>);

impl Default for BundleRoots {
    fn default() -> Self {
        Self(
            [
                "/run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json",
                "/run/containerd/io.containerd.runtime.v2.task/moby/{id}/config.json",
                "/run/containers/storage/overlay-containers/{id}/userdata/config.json",
                "/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby/{id}/config.json",
                // containerd without Kubernetes (`ctr run`, nerdctl): found by cgroup path.
                "/run/containerd/io.containerd.runtime.v2.task/{namespace}/{id}/config.json",
            ]
            .map(PathBuf::from)
            .into(),
        )
    }
}

impl BundleRoots {
    pub const ID_SLOT: &'static str = "{id}";
    /// containerd namespace, in patterns for [`BundleRoots::lookup_task`].
    pub const NAMESPACE_SLOT: &'static str = "{namespace}";

    /// First bundle found wins. `Ok(None)` when no root has this container.
    pub fn lookup_names(&self, container_id: &str) -> Result<Option<K8sNames>, OciError> {
        Ok(self.lookup_bundle(container_id)?.map(|(names, _)| names))
    }

    /// [`BundleRoots::lookup_names`], with the runtime whose bundle it was, when the bundle's
    /// path says (the kubelet's cgroupfs driver leaves only a bare id in the cgroup path).
    pub fn lookup_bundle(&self, container_id: &str) -> Result<Option<(K8sNames, Option<Runtime>)>, OciError> {
        // Validated before touching the filesystem: only hex can reach a path, so no traversal.
        if !is_lower_hex(container_id, 64) {
            return Err(OciError::InvalidContainerId(container_id.to_owned()));
        }
        for path in self.0.iter().filter_map(|p| fill_slot(p, container_id)) {
            let Some(bytes) = read_config(&path)? else {
                continue;
            };
            let runtime = runtime_of_bundle(&path);
            return parse_names(&bytes)
                .map(|n| Some((n, runtime)))
                .map_err(|source| OciError::JsonAt { path, source });
        }
        Ok(None)
    }

    /// A containerd task outside Kubernetes, from its cgroup path. containerd's default
    /// cgroup is `/<namespace>/<id>` (oci/spec.go populateDefaultUnixSpec), under `ctr run
    /// --cgroup`'s parent when given, and its bundle is `<state>/<namespace>/<id>`. The
    /// bundle's `linux.cgroupsPath` must be this very cgroup, so that a cgroup that merely
    /// ends in two such names is not taken for a container. `Ok(None)`: not a task here.
    pub fn lookup_task(&self, cgroup_path: &str) -> Result<Option<ContainerdTask>, OciError> {
        let mut segs = cgroup_path.rsplit('/').filter(|s| !s.is_empty());
        let (Some(id), Some(namespace)) = (segs.next(), segs.next()) else {
            return Ok(None);
        };
        // Only containerd identifiers reach a path: no `/`, no leading `.`, so no traversal.
        if !is_containerd_identifier(id) || !is_containerd_identifier(namespace) {
            return Ok(None);
        }
        let patterns = self.0.iter().filter_map(|p| fill_slots(p, &[namespace, id]));
        for path in patterns {
            let Some(bytes) = read_config(&path)? else {
                continue;
            };
            let cfg = serde_json::from_slice::<OciConfig>(&bytes)
                .map_err(|source| OciError::JsonAt { path, source })?;
            let cgroup = cfg.linux.and_then(|l| l.cgroups_path).unwrap_or_default();
            if cgroup.trim_matches('/') != cgroup_path.trim_matches('/') {
                continue;
            }
            let name = cfg
                .annotations
                .and_then(|mut a| a.remove("nerdctl/name"))
                .filter(|n| !n.is_empty());
            return Ok(Some(ContainerdTask {
                namespace: namespace.to_owned(),
                id: id.to_owned(),
                name,
            }));
        }
        Ok(None)
    }
}

/// Which runtime keeps bundles there: Docker's containerd namespace is `moby`, CRI-O's
/// store is `containers/storage`, anything else under a containerd task directory is
/// containerd's own (the CRI plugin's `k8s.io`).
fn runtime_of_bundle(path: &Path) -> Option<Runtime> {
    let has = |c: &str| path.iter().any(|p| p == c);
    if has("moby") {
        Some(Runtime::Docker)
    } else if has("overlay-containers") {
        Some(Runtime::CriO)
    } else if has("io.containerd.runtime.v2.task") {
        Some(Runtime::Containerd)
    } else {
        None
    }
}

/// containerd's identifier rule (identifiers/validate.go): `^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`,
/// at most 76 characters.
fn is_containerd_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    let sep = |c: &u8| matches!(c, b'.' | b'_' | b'-');
    !b.is_empty()
        && b.len() <= 76
        && b.iter().all(|c| c.is_ascii_alphanumeric() || sep(c))
        && !sep(&b[0])
        && !sep(&b[b.len() - 1])
        && !b.windows(2).any(|w| sep(&w[0]) && sep(&w[1]))
}

/// Whole-component substitution of the id; a pattern without the id slot, or with any other
/// slot, is skipped (a slotless one would attribute one fixed file to every container).
fn fill_slot(pattern: &Path, id: &str) -> Option<PathBuf> {
    let slot = OsStr::new(BundleRoots::ID_SLOT);
    if pattern.iter().any(|c| c == BundleRoots::NAMESPACE_SLOT) {
        return None;
    }
    let path: PathBuf = pattern
        .iter()
        .map(|c| if c == slot { id.as_ref() } else { c })
        .collect();
    (path != pattern).then_some(path)
}

/// `[namespace, id]` into a pattern that has both slots; any other pattern is skipped.
fn fill_slots(pattern: &Path, [namespace, id]: &[&str; 2]) -> Option<PathBuf> {
    let has = |slot: &str| pattern.iter().any(|c| c == slot);
    if !has(BundleRoots::NAMESPACE_SLOT) || !has(BundleRoots::ID_SLOT) {
        return None;
    }
    let path = pattern
        .iter()
        .map(|c| match c.to_str() {
            Some(BundleRoots::NAMESPACE_SLOT) => OsStr::new(namespace),
            Some(BundleRoots::ID_SLOT) => OsStr::new(id),
            _ => c,
        })
        .collect();
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "4f9a1c2b3d4e5f60718293a4b5c6d7e8f9012345678901234567890abcdef012";

    fn names(ns: &str, pod: &str, ctr: &str) -> K8sNames {
        let s = |v: &str| Some(v.to_owned());
        K8sNames {
            namespace: s(ns),
            pod: s(pod),
            container: s(ctr),
        }
    }

    const CONTAINERD_CFG: &str = r#"{"ociVersion":"1.1.0","process":{"args":["/app"]},
        "annotations":{"io.kubernetes.cri.container-type":"container",
          "io.kubernetes.cri.sandbox-namespace":"default",
          "io.kubernetes.cri.sandbox-name":"web-7d4b9c-x2x9q",
          "io.kubernetes.cri.container-name":"nginx"},
        "linux":{"namespaces":[{"type":"pid"}]}}"#;

    #[test]
    fn oci_containerd_and_crio_annotations() {
        let got = names_from_oci_config(CONTAINERD_CFG.as_bytes()).unwrap();
        assert_eq!(got, names("default", "web-7d4b9c-x2x9q", "nginx"));
        let crio = r#"{"annotations":{"io.kubernetes.pod.namespace":"kube-system",
            "io.kubernetes.pod.name":"coredns-5d78c9869d-abcde",
            "io.kubernetes.container.name":"coredns"}}"#;
        let got = names_from_oci_config(crio.as_bytes()).unwrap();
        let want = names("kube-system", "coredns-5d78c9869d-abcde", "coredns");
        assert_eq!(got, want);
    }

    #[test]
    fn oci_missing_annotations_and_malformed() {
        let no_ann = r#"{"ociVersion":"1.0.2"}"#;
        let empty_name = r#"{"annotations":{"io.kubernetes.pod.name":""}}"#;
        for ok in [no_ann, r#"{"annotations":null}"#, empty_name] {
            let got = names_from_oci_config(ok.as_bytes()).unwrap();
            assert_eq!(got, K8sNames::default(), "{ok}");
        }
        for bad in ["", "{", "not json", r#"{"annotations":{"a":1}}"#] {
            let res = names_from_oci_config(bad.as_bytes());
            assert!(matches!(res, Err(OciError::Json(_))), "{bad}");
        }
    }

    #[test]
    fn lookup_names_in_tempdir() {
        let dir = tempfile::tempdir().unwrap();
        let roots = BundleRoots(vec![
            dir.path().join("nothing-here/{id}/config.json"),
            dir.path().join("k8s.io/{id}/config.json"),
        ]);
        assert_eq!(roots.lookup_names(CID).unwrap(), None);
        let bundle = |id: &str| {
            let dir = dir.path().join("k8s.io").join(id);
            std::fs::create_dir_all(&dir).unwrap();
            dir.join("config.json")
        };
        std::fs::write(bundle(CID), CONTAINERD_CFG).unwrap();
        let want = names("default", "web-7d4b9c-x2x9q", "nginx");
        assert_eq!(roots.lookup_names(CID).unwrap(), Some(want));

        let (malformed, unreadable) = ("0".repeat(64), "1".repeat(64));
        std::fs::write(bundle(&malformed), "{oops").unwrap();
        match roots.lookup_names(&malformed) {
            Err(OciError::JsonAt { path, .. }) => assert_eq!(path, bundle(&malformed)),
            res => panic!("expected JsonAt, got {res:?}"),
        }
        std::fs::create_dir(bundle(&unreadable)).unwrap(); // config.json is a directory
        match roots.lookup_names(&unreadable) {
            Err(OciError::Io { path, .. }) => assert_eq!(path, bundle(&unreadable)),
            res => panic!("expected Io, got {res:?}"),
        }
    }

    #[test]
    fn lookup_rejects_unsafe_ids_and_slotless_patterns() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), CONTAINERD_CFG).unwrap();
        let roots = BundleRoots(vec![dir.path().join("{id}/config.json")]);
        let (upper, traversal) = (CID.to_uppercase(), format!("../{}", &CID[3..]));
        for bad in ["..", "../..", "", &upper, &traversal] {
            let res = roots.lookup_names(bad);
            assert!(matches!(res, Err(OciError::InvalidContainerId(_))), "{bad}");
        }
        // A pattern without the slot would hand every container the same names.
        let slotless = BundleRoots(vec![dir.path().join("config.json")]);
        assert_eq!(slotless.lookup_names(CID).unwrap(), None);
        let crio = fill_slot(&BundleRoots::default().0[2], CID).unwrap();
        let want = format!("/run/containers/storage/overlay-containers/{CID}/userdata/config.json");
        assert_eq!(crio, Path::new(&want));
    }

    /// What `ctr -n default run --cgroup /t/default/web1 ... web1` writes (trimmed).
    fn task_bundle(root: &Path, ns: &str, id: &str, cgroup: &str, ann: &str) {
        let dir = root.join(ns).join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = format!(
            r#"{{"ociVersion":"1.0.2-dev","annotations":{{{ann}}},"linux":{{"cgroupsPath":"{cgroup}"}}}}"#
        );
        std::fs::write(dir.join("config.json"), cfg).unwrap();
    }

    #[test]
    fn containerd_task_by_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let roots = BundleRoots(vec![dir.path().join("{namespace}/{id}/config.json")]);
        task_bundle(dir.path(), "default", "web1", "/t/default/web1", "");
        let task = roots.lookup_task("/t/default/web1").unwrap().unwrap();
        assert_eq!(
            (task.namespace.as_str(), task.id.as_str(), task.name),
            ("default", "web1", None)
        );
        // nerdctl's name wins; the bundle must be this very cgroup's.
        task_bundle(
            dir.path(),
            "nerdctl",
            "abc",
            "/nerdctl/abc",
            r#""nerdctl/name":"db""#,
        );
        assert_eq!(
            roots
                .lookup_task("/nerdctl/abc")
                .unwrap()
                .unwrap()
                .name
                .as_deref(),
            Some("db")
        );
        assert_eq!(roots.lookup_task("/elsewhere/nerdctl/abc").unwrap(), None);
        for not_task in ["/", "/web1", "/t/default/nope", "/t/../web1", "/t/default/.web1"] {
            assert_eq!(roots.lookup_task(not_task).unwrap(), None, "{not_task}");
        }
        task_bundle(dir.path(), "bad", "json", "/bad/json", "oops");
        assert!(matches!(
            roots.lookup_task("/bad/json"),
            Err(OciError::JsonAt { .. })
        ));
        // Id-only patterns never see a task lookup, and {namespace} patterns no id lookup.
        assert_eq!(roots.lookup_names(CID).unwrap(), None);
        let id_only = BundleRoots(vec![dir.path().join("default/{id}/config.json")]);
        assert_eq!(id_only.lookup_task("/t/default/web1").unwrap(), None);
    }

    #[test]
    fn bundle_path_names_the_runtime() {
        let d = BundleRoots::default();
        let runtimes: Vec<_> =
            d.0.iter()
                .filter_map(|p| fill_slot(p, CID))
                .map(|p| runtime_of_bundle(&p))
                .collect();
        use Runtime::*;
        assert_eq!(
            runtimes,
            [Some(Containerd), Some(Docker), Some(CriO), Some(Docker)]
        );
        assert_eq!(runtime_of_bundle(Path::new("/srv/bundles/x/config.json")), None);
    }

    #[test]
    fn containerd_identifiers() {
        for ok in ["a", "web1", "k8s.io", "a-b_c.d", &"x".repeat(76)] {
            assert!(is_containerd_identifier(ok), "{ok}");
        }
        for bad in ["", ".", "..", "-a", "a-", "a..b", "a/b", "é", &"x".repeat(77)] {
            assert!(!is_containerd_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn oversized_config_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, vec![b' '; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        assert!(matches!(read_config(&path), Err(OciError::TooLarge { .. })));
        assert_eq!(read_config(&dir.path().join("none")).unwrap(), None);
    }
}
