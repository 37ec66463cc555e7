//! The nodes' logs and the diagnostics shown when something fails: each node's process state,
//! its last `/api/cluster` answer and the tail of its log.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use super::{ERROR_LOG_TAIL_LINES, HTTP_REQUEST_TIMEOUT, LOG_TAIL_BYTES_MAX, TestCluster};

impl TestCluster {
    /// The last `lines` lines of node `id`'s log (stdout and stderr of all its runs).
    ///
    /// # Panics
    /// If there is no node `id`.
    pub fn log_tail(&self, id: &str, lines: usize) -> String {
        let path = &self.expect_node(id).log_path;
        match read_log_end(path) {
            Ok(text) => last_lines(&text, lines).to_string(),
            Err(error) => format!("(cannot read {}: {error})", path.display()),
        }
    }

    /// A report for failure messages: each node's process state, `/api/cluster` answer (live
    /// nodes only) and last log lines.
    pub async fn diagnostics(&self) -> String {
        let mut report = format!("cluster directory: {}\n", self.dir.display());
        for node in &self.nodes {
            let process = self.process_state(&node.id);
            report.push_str(&format!(
                "--- node {} ({process}), http://{}\n",
                node.id, node.http_addr
            ));
            if process.is_live() {
                let view = self
                    .get_json(&node.id, "/api/cluster", HTTP_REQUEST_TIMEOUT)
                    .await;
                match view {
                    Ok(view) => report.push_str(&format!("/api/cluster: {view}\n")),
                    Err(error) => report.push_str(&format!("/api/cluster: {error:#}\n")),
                }
            }
            report.push_str(&format!("last {ERROR_LOG_TAIL_LINES} log lines:\n"));
            report.push_str(&self.log_tail(&node.id, ERROR_LOG_TAIL_LINES));
            report.push('\n');
        }
        report
    }
}

/// The end of a log file, at most [`LOG_TAIL_BYTES_MAX`] bytes, decoded lossily.
fn read_log_end(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES_MAX)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The last `count` lines of `text`.
fn last_lines(text: &str, count: usize) -> &str {
    let trimmed = text.trim_end_matches('\n');
    if count == 0 {
        return "";
    }
    match trimmed.rmatch_indices('\n').nth(count - 1) {
        Some((index, _)) => &trimmed[index + 1..],
        None => trimmed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_takes_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\nb\nc", 5), "a\nb\nc");
        assert_eq!(last_lines("a\nb\nc", 0), "");
        assert_eq!(last_lines("", 3), "");
    }
}
