//! Converters run as ports: every conversion runs in a separate worker process, owned by a
//! supervised actor on the job's node, the way Erlang runs unsafe native code in ports.
//!
//! A converter is native code fed with a stranger's bytes: an allocation failure aborts, a
//! deep recursion overflows the stack, a loop in a decoder never ends. None of that can be
//! caught inside the process it happens in, so it must not happen inside a node. Instead:
//!
//! - `worker`: the node's own binary run as `node convert-worker ...`. It limits itself first
//!   (`sandbox`: address space, CPU seconds, output file size, open files, no core files, death
//!   with its node, a network namespace when root, Landlock on files and TCP), then reads one
//!   request from stdin, converts the input file in its private directory and writes the
//!   output file and one result line.
//! - `protocol`: the JSON lines between them, versioned and bounded.
//! - `actor`: `ConverterPortActor`, one per conversion under the node's ports supervisor. It
//!   starts the worker (empty environment, private directory, its own process group), forwards
//!   its progress, kills the group at the wall-clock timeout, on cancellation and when it stops
//!   itself, and answers with a [`PortOutcome`].
//! - `outcome`: how each way a worker can end becomes a reason a person can read.
//!
//! **Architecture Invariant:** no converter code runs in a node process. Whatever an input does
//! to a converter, the node sees an exit status and a few lines of text.

pub mod actor;
pub mod outcome;
pub mod protocol;
pub mod sandbox;
pub mod worker;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

pub use self::actor::{PortJob, convert_in_port, ports_supervisor_name, supervisor_child_spec};
pub use self::outcome::PortOutcome;

/// How this node starts converter workers. Filled in by `node run`, the only crate that reads
/// the environment; the default (no program) makes every conversion fail as unavailable.
#[derive(Debug, Clone, Default)]
pub struct WorkerProgram {
    /// The program run with the `convert-worker` subcommand: the node's own binary.
    pub program: Option<PathBuf>,
    /// LibreOffice's `soffice`, when the node found it.
    pub office: Option<PathBuf>,
    /// Where private working directories are created (the system's temporary directory).
    pub temp_root: PathBuf,
}

/// The first executable file called `name` in the directories of a `PATH` value.
pub fn find_program(name: &str, path_value: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_value)
        .map(|directory| directory.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// A private working directory (mode 0700) for one conversion, removed when dropped.
#[derive(Debug)]
pub struct PrivateDirectory {
    path: PathBuf,
}

impl PrivateDirectory {
    /// Creates `actorhub-convert-<pid>-<random>` under `root`.
    pub fn create(root: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|error| std::io::Error::other(error.to_string()))?;
        let path = root.join(format!(
            "actorhub-convert-{}-{:016x}",
            std::process::id(),
            u64::from_le_bytes(random)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateDirectory {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(%error, "could not remove a converter's working directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_a_path_value() {
        let directory = tempfile::tempdir().expect("tempdir");
        let program = directory.path().join("tool");
        std::fs::write(&program, "#!/bin/sh\n").expect("write");
        let path_value =
            std::env::join_paths(["/nonexistent", &directory.path().display().to_string()])
                .expect("join");
        assert_eq!(
            find_program("tool", &path_value),
            None,
            "not executable yet"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(find_program("tool", &path_value), Some(program));
    }

    #[test]
    fn private_directories_are_private_and_go_away() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let directory = PrivateDirectory::create(root.path()).expect("create");
        let path = directory.path().to_path_buf();
        std::fs::write(path.join("input.png"), b"x").expect("write");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(directory);
        assert!(!path.exists());
    }
}
