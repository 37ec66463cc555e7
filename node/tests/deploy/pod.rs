//! One pod of the StatefulSet on this machine: its volumes as files under a pod root, its
//! environment from the downward API and the manifest, its command and arguments with
//! `$(VAR)` expanded as Kubernetes does, and container paths moved under the pod root (the only
//! change made to what the manifests say).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::yaml;

/// The image's search path (debian:bookworm-slim); the container has no other environment
/// than this and what the manifest sets.
pub const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The image's working directory and its user's home (deploy/Dockerfile).
const IMAGE_WORKDIR: &str = "/var/lib/actorhub";
/// The ConfigMap the StatefulSet mounts cluster.toml from (deploy/k8s/configmap.yaml).
const CONFIG_MAP: &str = "actorhub-config";

/// A volume's files: (name, content).
pub type Files = Vec<(String, Vec<u8>)>;

/// The StatefulSet's node container and its pod's volumes.
pub struct ContainerSpec {
    pub command: Vec<String>,
    pub arguments: Vec<String>,
    env: Vec<Value>,
    mounts: Vec<Value>,
    volumes: BTreeMap<String, Value>,
}

/// What starts one pod's node: arguments after the program, environment, working directory.
pub struct PodProcess {
    pub arguments: Vec<String>,
    pub environment: Vec<(String, String)>,
    pub directory: PathBuf,
}

impl ContainerSpec {
    /// The container named `node` of deploy/k8s/statefulset.yaml.
    pub fn load() -> ContainerSpec {
        let statefulset = yaml("k8s/statefulset.yaml");
        assert_eq!(statefulset["kind"], "StatefulSet");
        let pod = &statefulset["spec"]["template"]["spec"];
        let container = pod["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .find(|container| container["name"] == "node")
            .expect("a container named node")
            .clone();
        let volumes = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .map(|volume| {
                let name = volume["name"].as_str().expect("volume name").to_string();
                (name, volume.clone())
            })
            .collect();
        ContainerSpec {
            command: strings(&container["command"]),
            arguments: strings(&container["args"]),
            env: container["env"].as_array().expect("env").clone(),
            mounts: container["volumeMounts"]
                .as_array()
                .expect("volumeMounts")
                .clone(),
            volumes,
        }
    }

    /// The value of `--flag VALUE` in the arguments, `$(VAR)` expanded from `defined`.
    pub fn flag(&self, flag: &str, defined: &BTreeMap<String, String>) -> String {
        let value = self
            .arguments
            .windows(2)
            .find(|pair| pair[0] == flag)
            .map(|pair| pair[1].as_str())
            .unwrap_or_else(|| panic!("the container passes no {flag}"));
        expand(value, defined)
    }

    fn mount_paths(&self) -> Vec<String> {
        self.mounts
            .iter()
            .map(|mount| mount["mountPath"].as_str().expect("mountPath").to_string())
            .collect()
    }

    /// Writes every volume of the pod under `pod_root`, as the kubelet would mount it: the
    /// ConfigMap's cluster.toml (`config_text`), the Secrets (`secret_files`), empty dirs.
    pub fn mount_volumes(
        &self,
        pod_root: &Path,
        config_text: &str,
        secret_files: &dyn Fn(&str) -> Files,
    ) {
        let mount_paths = self.mount_paths();
        for mount in &self.mounts {
            let name = mount["name"].as_str().expect("mount name");
            let mount_path = mount["mountPath"].as_str().expect("mountPath");
            let target = pod_root.join(mount_path.trim_start_matches('/'));
            let volume = self
                .volumes
                .get(name)
                .unwrap_or_else(|| panic!("volumeMount {name} has no volume"));
            let files: Files = if let Some(config_map) = volume.get("configMap") {
                assert_eq!(
                    config_map["name"], CONFIG_MAP,
                    "the ConfigMap of configmap.yaml"
                );
                let text = rewrite_paths(config_text, &mount_paths, pod_root);
                vec![("cluster.toml".into(), text.into_bytes())]
            } else if let Some(secret) = volume.get("secret") {
                let files = secret_files(secret["secretName"].as_str().expect("secretName"));
                secret_items(secret, files)
            } else if volume.get("emptyDir").is_some() {
                Vec::new()
            } else {
                panic!("volume {name}: this test knows configMap, secret and emptyDir volumes");
            };
            match mount.get("subPath").and_then(Value::as_str) {
                Some(sub_path) => {
                    let (_, content) = files
                        .iter()
                        .find(|(file, _)| file == sub_path)
                        .unwrap_or_else(|| panic!("volume {name} has no {sub_path}"));
                    std::fs::create_dir_all(target.parent().expect("parent"))
                        .expect("mount parent");
                    std::fs::write(&target, content).expect("write a mounted file");
                }
                None => {
                    std::fs::create_dir_all(&target).expect("mount directory");
                    for (file, content) in &files {
                        std::fs::write(target.join(file), content).expect("write a mounted file");
                    }
                }
            }
        }
    }

    /// How pod `pod` (address `pod_ip`, files under `pod_root`) starts its node: the downward
    /// API, then the manifest's env in order (`$(VAR)` expanded from the names defined before
    /// it), then the command's arguments expanded from all of them.
    pub fn process(&self, pod: &str, pod_ip: &str, pod_root: &Path) -> PodProcess {
        let mount_paths = self.mount_paths();
        let rewrite = |text: &str| rewrite_paths(text, &mount_paths, pod_root);
        let mut defined = BTreeMap::new();
        let mut environment = vec![
            ("PATH".to_string(), IMAGE_PATH.to_string()),
            ("HOME".to_string(), rewrite(IMAGE_WORKDIR)),
        ];
        for entry in &self.env {
            let name = entry["name"].as_str().expect("env name").to_string();
            let value = if let Some(value) = entry["value"].as_str() {
                rewrite(&expand(value, &defined))
            } else {
                match entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => pod.to_string(),
                    Some("status.podIP") => pod_ip.to_string(),
                    other => panic!(
                        "env {name}: this test knows metadata.name and status.podIP, not {other:?}"
                    ),
                }
            };
            defined.insert(name.clone(), value.clone());
            environment.push((name, value));
        }
        let arguments = self.command[1..]
            .iter()
            .chain(&self.arguments)
            .map(|argument| rewrite(&expand(argument, &defined)))
            .collect();
        let directory = PathBuf::from(rewrite(IMAGE_WORKDIR));
        std::fs::create_dir_all(&directory).expect("working directory");
        PodProcess {
            arguments,
            environment,
            directory,
        }
    }
}

/// A Secret's files as mounted: all its keys, or only the listed `items` under their paths.
fn secret_items(secret: &Value, files: Files) -> Files {
    let Some(items) = secret.get("items").and_then(Value::as_array) else {
        return files;
    };
    items
        .iter()
        .map(|item| {
            let key = item["key"].as_str().expect("item key");
            let (_, content) = files
                .iter()
                .find(|(name, _)| name == key)
                .unwrap_or_else(|| panic!("Secret item {key} is not among {files:?}"));
            let path = item["path"].as_str().expect("item path").to_string();
            (path, content.clone())
        })
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| item.as_str().expect("a string").to_string())
        .collect()
}

/// `$(NAME)` references expanded as Kubernetes does for a container's env, command and args:
/// defined names are replaced, `$$` escapes, anything else stays as written.
fn expand(text: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(position) = rest.find('$') {
        out.push_str(&rest[..position]);
        let after = &rest[position + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            out.push('$');
            rest = escaped;
            continue;
        }
        if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
            && let Some(value) = defined.get(&inner[..close])
        {
            out.push_str(value);
            rest = &inner[close + 1..];
            continue;
        }
        out.push('$');
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Characters that continue a path: a mount path matches only where none comes before it and
/// none but `/` comes after it.
fn is_path_char(character: char) -> bool {
    character.is_alphanumeric() || "_-./".contains(character)
}

/// Replaces each container path under one of `mount_paths` with the same path under
/// `pod_root`: the only change made to what the manifests say.
fn rewrite_paths(text: &str, mount_paths: &[String], pod_root: &Path) -> String {
    let mut longest_first = mount_paths.to_vec();
    longest_first.sort_by_key(|path| std::cmp::Reverse(path.len()));
    let mut out = String::new();
    let mut index = 0;
    'scan: while let Some(character) = text[index..].chars().next() {
        let starts_path = text[..index]
            .chars()
            .next_back()
            .is_none_or(|before| !is_path_char(before));
        if starts_path {
            for mount in &longest_first {
                let after = text[index..]
                    .strip_prefix(mount.as_str())
                    .map(|rest| rest.chars().next());
                if let Some(after) = after
                    && after.is_none_or(|after| after == '/' || !is_path_char(after))
                {
                    out.push_str(&format!("{}{mount}", pod_root.display()));
                    index += mount.len();
                    continue 'scan;
                }
            }
        }
        out.push(character);
        index += character.len_utf8();
    }
    out
}

#[test]
fn kubernetes_expansion_and_path_rewriting() {
    let defined = BTreeMap::from([
        ("POD_NAME".to_string(), "actorhub-1".to_string()),
        ("POD_IP".to_string(), "127.0.0.2".to_string()),
    ]);
    assert_eq!(expand("$(POD_IP):7100", &defined), "127.0.0.2:7100");
    assert_eq!(expand("--id=$(POD_NAME)", &defined), "--id=actorhub-1");
    assert_eq!(
        expand("$$(POD_IP) $(UNKNOWN) $x", &defined),
        "$(POD_IP) $(UNKNOWN) $x"
    );
    let mounts = vec![
        "/etc/actorhub/tls".to_string(),
        "/var/lib/actorhub".to_string(),
    ];
    let root = Path::new("/tmp/pod");
    assert_eq!(
        rewrite_paths("dir = \"/etc/actorhub/tls\"", &mounts, root),
        "dir = \"/tmp/pod/etc/actorhub/tls\""
    );
    assert_eq!(
        rewrite_paths(
            "/var/lib/actorhub/x /var/lib/actorhubs /x/var/lib/actorhub",
            &mounts,
            root
        ),
        "/tmp/pod/var/lib/actorhub/x /var/lib/actorhubs /x/var/lib/actorhub"
    );
}
