//! Reading PromQL for the metric names it selects, and a `/metrics` scrape for the series it
//! holds: enough to tell whether a query of deploy/ would select anything from a node.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{read_deploy, yaml};

/// Labels Prometheus attaches at scrape time.
const SCRAPE_LABELS: [&str; 2] = ["job", "instance"];

/// One metric selector of a query: its name and the `label="value"` matchers it requires.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Selector {
    pub name: String,
    pub equal: Vec<(String, String)>,
    /// Where it was found, for messages.
    pub origin: String,
}

/// Every PromQL expression of the dashboard (queries and variables) and of the alert rules.
pub fn deploy_queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    let dashboard: Value =
        serde_json::from_str(&read_deploy("grafana/actorhub.json")).expect("dashboard JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((
                    format!("dashboard panel {:?}", panel["title"]),
                    expr.to_string(),
                ));
            }
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push((
                format!("dashboard variable {:?}", variable["name"]),
                query.into(),
            ));
        }
    }
    let alerts = yaml("prometheus/alerts.yaml");
    for group in alerts["groups"].as_array().expect("alert groups") {
        for rule in group["rules"].as_array().expect("rules") {
            queries.push((
                format!("alert {}", rule["alert"].as_str().unwrap_or("?")),
                rule["expr"].as_str().expect("alert expr").to_string(),
            ));
        }
    }
    assert!(
        queries.len() > 20,
        "found only {} queries in deploy/",
        queries.len()
    );
    queries
}

fn is_name_start(character: char) -> bool {
    character.is_ascii_alphabetic() || character == '_' || character == ':'
}

fn is_name_char(character: char) -> bool {
    character.is_ascii_alphanumeric() || character == '_' || character == ':'
}

/// The metric selectors of `expr`: every `actorhub_*` name (with its braces' equality
/// matchers), and every other name written with braces or a range (Prometheus's own `up`).
pub fn selectors(origin: &str, expr: &str) -> Vec<Selector> {
    let characters: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    let mut index = 0;
    let mut in_string = false;
    while index < characters.len() {
        let character = characters[index];
        if character == '"' {
            in_string = !in_string;
            index += 1;
            continue;
        }
        let starts_name = !in_string
            && is_name_start(character)
            && (index == 0 || !is_name_char(characters[index - 1]));
        if !starts_name {
            index += 1;
            continue;
        }
        let start = index;
        while index < characters.len() && is_name_char(characters[index]) {
            index += 1;
        }
        let name: String = characters[start..index].iter().collect();
        let next = characters.get(index).copied();
        let with_braces = next == Some('{');
        if !(name.starts_with("actorhub_") || with_braces || next == Some('[')) {
            continue;
        }
        let mut equal = Vec::new();
        if with_braces {
            let close = characters[index..]
                .iter()
                .position(|&character| character == '}')
                .map(|offset| index + offset)
                .unwrap_or_else(|| panic!("{origin}: unclosed braces in {expr}"));
            let inside: String = characters[index + 1..close].iter().collect();
            for matcher in inside.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                let Some((label, value)) = matcher.split_once('=') else {
                    panic!("{origin}: cannot read matcher {matcher:?} in {expr}");
                };
                let (label, value) = (label.trim(), value.trim());
                // `=~`, `!=` and `!~` select by pattern or exclusion; only `=` demands a value.
                if label.ends_with('!') || value.starts_with('~') {
                    continue;
                }
                if SCRAPE_LABELS.contains(&label) {
                    continue;
                }
                equal.push((label.to_string(), value.trim_matches('"').to_string()));
            }
            index = close + 1;
        }
        found.push(Selector {
            name,
            equal,
            origin: origin.to_string(),
        });
    }
    found
}

/// A scrape of `/metrics`: the `# TYPE` of each metric and every sample's name and labels.
#[derive(Debug, Default)]
pub struct Exposition {
    types: BTreeMap<String, String>,
    /// Sample name (with `_sum`/`_count`/`_bucket` as written) -> label sets seen.
    samples: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

impl Exposition {
    pub fn add(&mut self, text: &str) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    self.types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (name, labels) = match line.find('{') {
                Some(open) => {
                    let close = line.rfind('}').expect("closing brace in a sample line");
                    (&line[..open], parse_labels(&line[open + 1..close]))
                }
                None => (
                    line.split_whitespace().next().unwrap_or_default(),
                    BTreeMap::new(),
                ),
            };
            self.samples
                .entry(name.to_string())
                .or_default()
                .push(labels);
        }
    }

    /// Why `selector` would select nothing from these nodes, or `None` when it selects a series.
    pub fn missing(&self, selector: &Selector) -> Option<String> {
        let name = &selector.name;
        let Some(kind) = self.types.get(name) else {
            return Some(format!("no metric {name} (no `# TYPE` line)"));
        };
        let quantile = selector.equal.iter().any(|(label, _)| label == "quantile");
        if quantile && kind != "summary" {
            return Some(format!(
                "{name} is a {kind}, but the query reads its quantiles (a summary's)"
            ));
        }
        if kind == "summary" || kind == "histogram" {
            for suffix in ["_sum", "_count"] {
                if !self.samples.contains_key(&format!("{name}{suffix}")) {
                    return Some(format!("{kind} {name} has no {name}{suffix}"));
                }
            }
        }
        let series = self
            .samples
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let matching = series.iter().any(|labels| {
            selector
                .equal
                .iter()
                .all(|(label, value)| labels.get(label) == Some(value))
        });
        if matching {
            None
        } else {
            Some(format!(
                "no sample of {name} has {:?}; seen label sets: {series:?}",
                selector.equal
            ))
        }
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((label, after)) = rest.split_once("=\"") {
        let label = label.trim_start_matches(',').trim();
        let mut value = String::new();
        let mut characters = after.char_indices();
        let mut end = after.len();
        while let Some((position, character)) = characters.next() {
            match character {
                '\\' => {
                    if let Some((_, escaped)) = characters.next() {
                        value.push(escaped);
                    }
                }
                '"' => {
                    end = position + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        labels.insert(label.to_string(), value);
        rest = &after[end..];
    }
    labels
}

#[test]
fn selectors_are_read_from_promql() {
    let found = selectors(
        "test",
        r#"sum by (instance, member) (increase(actorhub_membership_transitions_total{job="actorhub", state="down"}[5m])) > 0 and up{job="actorhub"} == 0 or max(actorhub_members_up)"#,
    );
    let names: Vec<_> = found.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "actorhub_membership_transitions_total",
            "up",
            "actorhub_members_up"
        ]
    );
    assert_eq!(found[0].equal, [("state".to_string(), "down".to_string())]);
    let quantile = selectors(
        "test",
        r#"max by (instance) (actorhub_ask_seconds{instance=~"$instance", quantile="0.99"})"#,
    );
    assert_eq!(
        quantile[0].equal,
        [("quantile".to_string(), "0.99".to_string())]
    );

    let mut exposition = Exposition::default();
    exposition.add(
        "# TYPE actorhub_ask_seconds summary\nactorhub_ask_seconds{quantile=\"0.99\"} 0.1\n\
         actorhub_ask_seconds_sum 1\nactorhub_ask_seconds_count 3\n\
         # TYPE actorhub_members_up gauge\nactorhub_members_up 2\n",
    );
    assert_eq!(exposition.missing(&quantile[0]), None);
    assert_eq!(exposition.missing(&found[2]), None);
    assert!(
        exposition
            .missing(&found[0])
            .is_some_and(|why| why.contains("no metric"))
    );
}
