//! Plain Docker's own record of a container: the name its user typed (`docker run --name`)
//! and the image as named, from `<data-root>/containers/<id>/config.v2.json`. The OCI bundle
//! has neither (dockerd keeps them to itself).

use std::path::PathBuf;

use serde::Deserialize;

use super::attribution::{OciError, read_config};

/// dockerd data roots (`dockerd --data-root`), searched in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerRoots(pub Vec<PathBuf>);

impl Default for DockerRoots {
    fn default() -> Self {
        Self(vec![PathBuf::from("/var/lib/docker")])
    }
}

/// What Docker says about a container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerNames {
    /// Without Docker's leading `/`.
    pub name: Option<String>,
    pub image: Option<String>,
}

/// Only the two fields read are modelled (daemon/config.v2.json, moby container.Container).
#[derive(Deserialize)]
struct ConfigV2 {
    #[serde(rename = "Name")]
    name: Option<String>,
    #[serde(rename = "Config")]
    config: Option<ContainerConfig>,
}

#[derive(Deserialize)]
struct ContainerConfig {
    #[serde(rename = "Image")]
    image: Option<String>,
}

impl DockerRoots {
    /// First data root that knows the container wins; `Ok(None)` when none does.
    pub fn lookup(&self, container_id: &str) -> Result<Option<DockerNames>, OciError> {
        // Docker ids are 64 lowercase hex: only those reach a path.
        let hex = container_id.len() == 64
            && container_id
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        if !hex {
            return Err(OciError::InvalidContainerId(container_id.to_owned()));
        }
        for root in &self.0 {
            let path = root.join("containers").join(container_id).join("config.v2.json");
            let Some(bytes) = read_config(&path)? else {
                continue;
            };
            let cfg: ConfigV2 =
                serde_json::from_slice(&bytes).map_err(|source| OciError::JsonAt { path, source })?;
            let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
            return Ok(Some(DockerNames {
                name: nonempty(cfg.name.map(|n| n.trim_start_matches('/').to_owned())),
                image: nonempty(cfg.config.and_then(|c| c.image)),
            }));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "b323b4fa50146dc430320c7cde204a0009549cfeb38e05b0828c09e093b9fa02";

    fn write(root: &std::path::Path, id: &str, json: &str) {
        let dir = root.join("containers").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.v2.json"), json).unwrap();
    }

    #[test]
    fn name_and_image_from_config_v2() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let roots = DockerRoots(vec![a.path().into(), b.path().into()]);
        assert_eq!(roots.lookup(CID).unwrap(), None);
        // A trimmed copy of what dockerd 20.10 wrote here for `docker run --name oomy`.
        write(
            b.path(),
            CID,
            r#"{"StreamConfig":{},"State":{"OOMKilled":true,"ExitCode":137},"ID":"b323b4fa",
            "Image":"sha256:76c4aca94e014434f1afbf5366806f97a02bde557e660eb8531204f6af430d58",
            "Config":{"Hostname":"b323b4fa5014","Image":"memtrace-alloc-test:1","Cmd":["/x"]},
            "Name":"/oomy","Driver":"overlay2"}"#,
        );
        let got = roots.lookup(CID).unwrap().unwrap();
        assert_eq!(got.name.as_deref(), Some("oomy"));
        assert_eq!(got.image.as_deref(), Some("memtrace-alloc-test:1"));
    }

    #[test]
    fn bad_ids_and_malformed_configs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let roots = DockerRoots(vec![dir.path().into()]);
        for bad in ["", "..", "../../etc", &CID.to_uppercase(), &CID[1..]] {
            let res = roots.lookup(bad);
            assert!(matches!(res, Err(OciError::InvalidContainerId(_))), "{bad}");
        }
        write(dir.path(), CID, "{not json");
        assert!(matches!(roots.lookup(CID), Err(OciError::JsonAt { .. })));
        // Missing fields are not an error: nothing to say.
        write(dir.path(), CID, r#"{"Name":"","Config":null}"#);
        assert_eq!(roots.lookup(CID).unwrap(), Some(DockerNames::default()));
    }
}
