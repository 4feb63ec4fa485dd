//! Attribute a memory cgroup path to a Kubernetes pod / container ([`cgroup_path`]), and
//! resolve human-readable names from the container's OCI bundle ([`bundles`]).

use serde::Serialize;

pub mod bundles;
pub mod cgroup_path;

pub(crate) use bundles::read_config;
pub use bundles::{BundleRoots, ContainerdTask, MAX_CONFIG_BYTES, OciError, names_from_oci_config};
pub use cgroup_path::parse_cgroup_path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    /// Bare-id leaf (cgroupfs driver): containerd and docker look identical there.
    Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct K8sNames {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// Dashed form, as the API server shows it.
    pub pod_uid: Option<String>,
    pub qos: Option<QosClass>,
    pub container_id: Option<String>,
    pub runtime: Option<Runtime>,
    /// Leaf cgroup when it is a systemd `.service` / `.scope` unit.
    pub systemd_unit: Option<String>,
    /// Never set by `parse_cgroup_path`; filled in by the caller from `BundleRoots`.
    pub names: Option<K8sNames>,
    /// The engine's own name for the container (Docker's `--name`; containerd's
    /// `<namespace>/<id>`), outside Kubernetes. Filled in by `enrich::names`.
    pub container_name: Option<String>,
    /// The image as the user named it (Docker's `Config.Image`). Filled in by `enrich::names`.
    pub image_name: Option<String>,
}
