//! The membership table: who is in the cluster, agreed through the shared object store.
//!
//! The table is a chain of create-only versions (`membership/<n>`), each a whole list of
//! members (id, addresses, incarnation). A node joins by writing the next version with itself
//! in it (or itself updated: a new incarnation, new addresses); a node gone for longer than
//! `cluster.member_remove_after_ms` (down in the remover's view all that time) is dropped by
//! whichever node writes the next version first; a node leaving gracefully drops itself. Two
//! writers racing for the same version: one create wins, the other reads the new latest and
//! tries again. Every node reads the latest version periodically and dials whoever is in it,
//! so a node joins a running cluster with no edit to the others' configuration (Orleans keeps
//! its membership table the same way).
//!
//! Old versions are deleted once a few newer ones exist: readers only need the latest, and a
//! writer that lost a race re-reads.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};
use crate::journal::layout;
use crate::journal::objects::{Created, Objects};

/// Versions kept (older ones are deleted).
const VERSIONS_KEPT: usize = 8;
/// Attempts of one update racing other writers before it gives up (the next tick retries).
const UPDATE_ATTEMPTS_MAX: usize = 32;
const PREFIX: &str = "membership";

/// One member, as the table lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableMember {
    pub id: String,
    pub cluster_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub incarnation: u64,
    /// Unix time (ms) this entry was written.
    pub since_ms: u64,
}

/// One version of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberTable {
    pub version: u64,
    pub members: Vec<TableMember>,
}

impl MemberTable {
    pub fn member(&self, id: &str) -> Option<&TableMember> {
        self.members.iter().find(|member| member.id == id)
    }
}

fn path(version: u64) -> String {
    format!("{PREFIX}/{version:020}")
}

/// The latest version (an empty table at version 0 if there is none yet).
pub async fn latest(objects: &dyn Objects) -> Result<MemberTable> {
    let names = objects.list(PREFIX.to_string(), None).await?;
    for version in names
        .iter()
        .filter_map(|name| layout::number_of(name))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        // An old version may be deleted between the listing and the read: take the next.
        if let Some(bytes) = objects.get(path(version)).await? {
            return layout::decode(&bytes, "membership table");
        }
    }
    Ok(MemberTable::default())
}

/// Applies `change` to the latest version and writes the result as the next one, unless
/// `change` says nothing changed; retried from the new latest when another writer won.
/// Returns the table as it stands afterwards.
pub async fn update(
    objects: &dyn Objects,
    mut change: impl FnMut(&mut MemberTable) -> bool,
) -> Result<MemberTable> {
    for _ in 0..UPDATE_ATTEMPTS_MAX {
        let mut table = latest(objects).await?;
        if !change(&mut table) {
            return Ok(table);
        }
        table.version += 1;
        match objects
            .create(path(table.version), layout::encode(&table))
            .await?
        {
            Created::Yes => {
                prune(objects, table.version).await;
                return Ok(table);
            }
            Created::Exists => continue,
        }
    }
    Err(RuntimeError::Unavailable(
        "the membership table keeps changing under this node; retrying later".into(),
    ))
}

async fn prune(objects: &dyn Objects, newest: u64) {
    let Ok(names) = objects.list(PREFIX.to_string(), None).await else {
        return;
    };
    for version in names.iter().filter_map(|name| layout::number_of(name)) {
        if version + (VERSIONS_KEPT as u64) <= newest {
            let _ = objects.delete(path(version)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::objects::StoreObjects;
    use crate::journal::storage::Durability;
    use std::sync::Arc;

    fn member(id: &str, incarnation: u64) -> TableMember {
        TableMember {
            id: id.into(),
            cluster_addr: "127.0.0.1:7101".parse().expect("address"),
            http_addr: "127.0.0.1:8101".parse().expect("address"),
            incarnation,
            since_ms: 1,
        }
    }

    #[tokio::test]
    async fn racing_writers_each_get_their_change_in() {
        let objects = StoreObjects::new(
            Arc::new(object_store::memory::InMemory::new()),
            Durability::on_put(),
            None,
        );
        let objects: Arc<dyn Objects> = Arc::new(objects);
        let writers: Vec<_> = (0..8)
            .map(|index| {
                let objects = Arc::clone(&objects);
                tokio::spawn(async move {
                    update(objects.as_ref(), |table| {
                        let id = format!("n{index}");
                        if table.member(&id).is_some() {
                            return false;
                        }
                        table.members.push(member(&id, 1));
                        true
                    })
                    .await
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("task").expect("update");
        }
        let table = latest(objects.as_ref()).await.expect("latest");
        assert_eq!(table.members.len(), 8, "{table:?}");
        assert_eq!(table.version, 8);
        // Unchanged: no new version.
        let same = update(objects.as_ref(), |_| false).await.expect("noop");
        assert_eq!(same.version, 8);
        let names = objects.list(PREFIX.into(), None).await.expect("list");
        assert!(
            names.len() <= VERSIONS_KEPT,
            "old versions pruned: {names:?}"
        );
    }
}
