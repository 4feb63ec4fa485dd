//! Who a victim's cgroup belongs to: the ids in its path ([`attribution::parse_cgroup_path`]),
//! then the names the engines recorded: Kubernetes names from the OCI bundle, Docker's own
//! name and image, or a plain containerd task found by its cgroup. Looked up once per cgroup
//! and kept after the container is gone (its files go with it).

use std::collections::HashMap;

use super::{
    attribution::{self, Attribution, BundleRoots, OciError, Runtime},
    docker::DockerRoots,
};

/// Where the engines keep their records.
#[derive(Clone, Debug, Default)]
pub struct NameSources {
    pub bundles: BundleRoots,
    pub docker: DockerRoots,
}

/// Cgroups remembered at most; past that the cache starts again (a lookup is a few small
/// file reads, and a host rarely has this many cgroups with kills).
const MAX_CACHED: usize = 4096;

pub struct Namer {
    sources: NameSources,
    by_cgroup: HashMap<String, Option<Attribution>>,
}

impl Namer {
    pub fn new(sources: NameSources) -> Self {
        Self {
            sources,
            by_cgroup: HashMap::new(),
        }
    }

    /// `None` when the cgroup says nothing about a container, pod or unit.
    pub fn attribute(&mut self, path: &str) -> Option<Attribution> {
        if let Some(a) = self.cached(path) {
            return a;
        }
        let a = resolve(&self.sources, path);
        self.remember(path, a.clone());
        a
    }

    /// What an earlier lookup found for `path` (no file read); `None`: not looked up yet.
    pub fn cached(&self, path: &str) -> Option<Option<Attribution>> {
        self.by_cgroup.get(path).cloned()
    }

    /// Keeps what a lookup made elsewhere ([`resolve`], off the event loop) found.
    pub fn remember(&mut self, path: &str, a: Option<Attribution>) {
        if self.by_cgroup.len() >= MAX_CACHED {
            self.by_cgroup.clear();
        }
        self.by_cgroup.insert(path.to_owned(), a);
    }

    pub fn sources(&self) -> &NameSources {
        &self.sources
    }
}

/// The attribution of `path`: its ids, then the engines' names from their files.
pub fn resolve(sources: &NameSources, path: &str) -> Option<Attribution> {
    let mut a = attribution::parse_cgroup_path(path);
    match a.container_id.clone() {
        Some(id) => {
            if let Some((names, runtime)) = logged(&id, sources.bundles.lookup_bundle(&id)).flatten() {
                a.names = Some(names);
                // A bare id (cgroupfs driver): the bundle's place says whose it is.
                if a.runtime == Some(Runtime::Unknown) && runtime.is_some() {
                    a.runtime = runtime;
                }
            }
            // A bare id (cgroupfs driver) may be Docker's too.
            if matches!(a.runtime, Some(Runtime::Docker | Runtime::Unknown))
                && let Some(d) = logged(&id, sources.docker.lookup(&id)).flatten()
            {
                a.container_name = d.name;
                a.image_name = d.image;
            }
        }
        None if a.pod_uid.is_none() => {
            if let Some(t) = logged(path, sources.bundles.lookup_task(path)).flatten() {
                a.runtime = Some(Runtime::Containerd);
                a.container_name = Some(t.name.unwrap_or_else(|| format!("{}/{}", t.namespace, t.id)));
                a.container_id = Some(t.id);
            }
        }
        None => {}
    }
    (a != Attribution::default()).then_some(a)
}

/// A lookup that failed is logged and treated as "nothing known": the kill is still reported.
fn logged<T>(what: &str, r: Result<T, OciError>) -> Option<T> {
    r.map_err(|e| log::warn!("container {what}: {e}")).ok()
}
