//! The generated `cluster.toml`: the tables every test cluster shares (name, cookie, data
//! directory, object store, token secret), the settings a test gave, the `[[node]]` entries,
//! then any verbatim text.

use anyhow::Context;

use super::builder::{ClusterBuilder, NodeAddresses};
use super::{TEST_CLUSTER_NAME, TEST_COOKIE, TEST_JWT_SECRET};

impl ClusterBuilder {
    /// The `cluster.toml` text for these nodes: generated tables, the test's settings, the
    /// `[[node]]` entries, then the extra text.
    pub(super) fn render_config(&self, nodes: &[NodeAddresses]) -> anyhow::Result<String> {
        let mut root = toml::Table::new();
        root.insert(
            "cluster".into(),
            table([
                ("name", TEST_CLUSTER_NAME.into()),
                ("cookie", TEST_COOKIE.into()),
                ("data_dir", "data".into()),
            ]),
        );
        root.insert(
            "storage".into(),
            table([("url", "file:data/objects".into())]),
        );
        root.insert(
            "web".into(),
            table([("jwt_secret", TEST_JWT_SECRET.into())]),
        );
        for (table_name, values) in &self.settings {
            let entry = root
                .entry(table_name.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let (toml::Value::Table(target), toml::Value::Table(values)) = (entry, values) {
                target.extend(values.clone());
            }
        }
        let node_entries = nodes
            .iter()
            .map(|node| {
                table([
                    ("id", node.id.as_str().into()),
                    ("cluster_addr", node.cluster_addr.to_string().into()),
                    ("http_addr", node.http_addr.to_string().into()),
                ])
            })
            .collect();
        root.insert("node".into(), toml::Value::Array(node_entries));

        let mut text = toml::to_string(&root).context("rendering cluster.toml")?;
        if !self.extra_toml.is_empty() {
            text.push('\n');
            text.push_str(&self.extra_toml);
        }
        Ok(text)
    }
}

/// A `u64` as a TOML integer (TOML integers are `i64`; larger values saturate and the node's
/// config validation reports them).
pub(super) fn toml_integer(value: u64) -> toml::Value {
    toml::Value::Integer(i64::try_from(value).unwrap_or(i64::MAX))
}

fn table<const N: usize>(entries: [(&str, toml::Value); N]) -> toml::Value {
    toml::Value::Table(
        entries
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect(),
    )
}

/// Parses a generated config as a node would (relative paths against `/tmp/cluster`); panics
/// with the text when the node would reject it.
#[cfg(test)]
pub(super) fn parse_generated(text: &str) -> runtime::config::ClusterConfig {
    let overrides = runtime::config::ConfigOverrides {
        base_dir: Some("/tmp/cluster".into()),
        ..Default::default()
    };
    match runtime::config::ClusterConfig::from_toml(text, "generated.toml", overrides) {
        Ok(config) => config,
        Err(error) => panic!("generated config rejected: {error}\n{text}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use runtime::config::{ClusterConfig, ConfigOverrides};

    use super::*;
    use crate::cluster::builder::node_addresses;

    #[test]
    fn generated_config_is_accepted_by_the_runtime() {
        let builder = ClusterBuilder::new("/nonexistent/node")
            .nodes(3)
            .heartbeat(100, 600)
            .setting("entities", "passivate_after_ms", 1_000);
        let nodes = node_addresses(3).expect("addresses");
        let config = parse_generated(&builder.render_config(&nodes).expect("render"));
        assert_eq!(config.nodes.len(), 3);
        assert_eq!(config.nodes[1].id, "n2");
        assert_eq!(config.nodes[1].http_addr, nodes[1].http_addr);
        assert_eq!(config.nodes[2].cluster_addr, nodes[2].cluster_addr);
        assert_eq!(config.cluster.heartbeat_interval_ms, 100);
        assert_eq!(config.cluster.failure_timeout_ms, 600);
        assert_eq!(config.entities.passivate_after_ms, 1_000);
        assert_eq!(config.cookie(), TEST_COOKIE);
        // `[web]` is the web crate's section: the node reads it, the runtime's config does not.
        let text = builder.render_config(&nodes).expect("render");
        let file: toml::Value = toml::from_str(&text).expect("toml");
        assert_eq!(file["web"]["jwt_secret"].as_str(), Some(TEST_JWT_SECRET));
        assert_eq!(config.cluster.data_dir, PathBuf::from("/tmp/cluster/data"));
        assert_eq!(config.storage.url, "file:///tmp/cluster/data/objects");
    }

    #[test]
    fn settings_replace_generated_values() {
        let builder = ClusterBuilder::new("/nonexistent/node").nodes(1).setting(
            "storage",
            "url",
            "file:///srv/objects",
        );
        let config = parse_generated(
            &builder
                .render_config(&node_addresses(1).expect("addresses"))
                .expect("render"),
        );
        assert_eq!(config.storage.url, "file:///srv/objects");
    }

    #[test]
    fn extra_toml_is_appended_verbatim() {
        let builder = ClusterBuilder::new("/nonexistent/node")
            .nodes(1)
            .extra_toml("[entities]\nask_timeout_ms = 7000");
        let text = builder
            .render_config(&node_addresses(1).expect("addresses"))
            .expect("render");
        assert!(
            text.ends_with("[entities]\nask_timeout_ms = 7000\n"),
            "{text}"
        );
        assert_eq!(parse_generated(&text).entities.ask_timeout_ms, 7_000);

        let bad = ClusterBuilder::new("/nonexistent/node")
            .nodes(1)
            .extra_toml("[entities]\nbogus = 1\n");
        let text = bad
            .render_config(&node_addresses(1).expect("addresses"))
            .expect("render");
        let overrides = ConfigOverrides::default();
        assert!(ClusterConfig::from_toml(&text, "bad.toml", overrides).is_err());
    }
}
