//! What a converter worker does to itself before it reads a byte of untrusted input: resource
//! limits, death with its node, no network, no filesystem beyond its own directory.
//!
//! Limits are applied by the worker to itself, right after `exec` (the workspace allows no
//! `unsafe`, so nothing runs between `fork` and `exec`); the node has already put it in a
//! process group of its own (`Command::process_group(0)`), so that killing the group reaches
//! LibreOffice and anything else it started. What the operating system refuses (Landlock on an
//! old kernel, a network namespace without root) is reported in the `ready` line, and the node
//! logs it once.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};
use rustix::process::{Resource, Rlimit, Signal};

use super::protocol::SandboxReport;

/// The Landlock ABI this code is written against (Linux 6.15: filesystem, TCP, scopes, audit
/// flags). Older kernels enforce what they know (best effort).
const LANDLOCK_ABI: ABI = ABI::V7;

/// System directories LibreOffice reads (its program, libraries, fonts, configuration).
const OFFICE_READ_DIRECTORIES: [&str; 8] = [
    "/usr", "/lib", "/lib64", "/bin", "/etc", "/opt", "/proc", "/sys",
];
/// Device files LibreOffice opens.
const OFFICE_DEVICE_FILES: [&str; 3] = ["/dev/null", "/dev/urandom", "/dev/random"];

/// The limits the node asks for (from `[jobs]`), passed on the worker's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLimits {
    pub memory_bytes_max: u64,
    pub cpu_seconds_max: u64,
    /// Largest file the worker may write (its output).
    pub file_bytes_max: u64,
    pub open_files_max: u64,
    /// The LibreOffice program, for office conversions (its directories become readable).
    pub office: Option<PathBuf>,
}

/// Why the sandbox could not be set up at all (the worker then refuses to run).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot set {what}: {error}")]
    Limit {
        what: &'static str,
        error: rustix::io::Errno,
    },
    #[error("the node that started this worker is gone")]
    Orphaned,
}

fn set_limit(
    resource: Resource,
    what: &'static str,
    soft: u64,
    hard: u64,
) -> Result<(), SandboxError> {
    rustix::process::setrlimit(
        resource,
        Rlimit {
            current: Some(soft),
            maximum: Some(hard),
        },
    )
    .map_err(|error| SandboxError::Limit { what, error })
}

/// Applies every limit to the calling process; `parent` is the node's pid. Call first thing.
pub fn enter(
    limits: &WorkerLimits,
    parent: u32,
    directory: &Path,
) -> Result<SandboxReport, SandboxError> {
    // No core files: a crash on a 500 MB image must not write 500 MB to disk.
    set_limit(Resource::Core, "RLIMIT_CORE", 0, 0)?;
    set_limit(
        Resource::As,
        "RLIMIT_AS",
        limits.memory_bytes_max,
        limits.memory_bytes_max,
    )?;
    // SIGXCPU at the soft limit; SIGKILL one second later if it is ignored.
    set_limit(
        Resource::Cpu,
        "RLIMIT_CPU",
        limits.cpu_seconds_max,
        limits.cpu_seconds_max.saturating_add(1),
    )?;
    set_limit(
        Resource::Fsize,
        "RLIMIT_FSIZE",
        limits.file_bytes_max,
        limits.file_bytes_max,
    )?;
    set_limit(
        Resource::Nofile,
        "RLIMIT_NOFILE",
        limits.open_files_max,
        limits.open_files_max,
    )?;
    // Die with the node. The signal is tied to the thread that forked us (a tokio worker thread
    // of the node, which lives as long as the node); if the node died before this call, our
    // parent is no longer the node.
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).map_err(|error| {
        SandboxError::Limit {
            what: "the parent-death signal",
            error,
        }
    })?;
    if rustix::process::getppid().map(|pid| pid.as_raw_nonzero().get() as u32) != Some(parent) {
        return Err(SandboxError::Orphaned);
    }
    let network_namespace = rustix::process::geteuid().is_root()
        && nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_ok();
    let landlock = restrict_files_and_network(directory, limits.office.as_deref());
    Ok(SandboxReport {
        network_namespace,
        landlock: landlock.to_string(),
    })
}

/// Landlock: read and write beneath `directory` only (plus read-only system directories for
/// LibreOffice), no TCP bind or connect, no signals or abstract sockets outside the sandbox.
/// Returns `full`, `partial` or `none`.
fn restrict_files_and_network(directory: &Path, office: Option<&Path>) -> &'static str {
    let abi = LANDLOCK_ABI;
    let status = (|| -> Result<RulesetStatus, landlock::RulesetError> {
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(AccessFs::from_all(abi))?
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?
            .scope(Scope::from_all(abi))?
            .create()?
            .add_rules(path_beneath_rules([directory], AccessFs::from_all(abi)))?;
        if let Some(program) = office {
            let mut readable: Vec<&Path> = OFFICE_READ_DIRECTORIES.iter().map(Path::new).collect();
            // soffice may live outside the usual places (e.g. /snap, /nix).
            if let Some(home) = program.parent().and_then(Path::parent) {
                readable.push(home);
            }
            ruleset = ruleset
                .add_rules(path_beneath_rules(readable, AccessFs::from_read(abi)))?
                .add_rules(path_beneath_rules(
                    OFFICE_DEVICE_FILES,
                    AccessFs::from_file(abi),
                ))?;
        }
        Ok(ruleset.restrict_self()?.ruleset)
    })();
    match status {
        Ok(RulesetStatus::FullyEnforced) => "full",
        Ok(RulesetStatus::PartiallyEnforced) => "partial",
        Ok(RulesetStatus::NotEnforced) | Err(_) => "none",
    }
}
