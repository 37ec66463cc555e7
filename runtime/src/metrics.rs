//! Every metric the runtime records, named in one place and described for `/metrics`.

pub const MEMBERS_UP: &str = "actorhub_members_up";
pub const MEMBERSHIP_TRANSITIONS_TOTAL: &str = "actorhub_membership_transitions_total";
pub const HEARTBEATS_SENT_TOTAL: &str = "actorhub_heartbeats_sent_total";
pub const HEARTBEAT_RTT_SECONDS: &str = "actorhub_heartbeat_rtt_seconds";
pub const DIALS_TOTAL: &str = "actorhub_dials_total";
pub const SESSIONS_CLOSED_TOTAL: &str = "actorhub_sessions_closed_total";
pub const ENTITIES_ACTIVE: &str = "actorhub_entities_active";
pub const ENTITY_ACTIVATIONS_TOTAL: &str = "actorhub_entity_activations_total";
pub const ENTITY_PASSIVATIONS_TOTAL: &str = "actorhub_entity_passivations_total";
pub const ENTITY_RESTARTS_TOTAL: &str = "actorhub_entity_restarts_total";
pub const ENTITY_MESSAGES_TOTAL: &str = "actorhub_entity_messages_total";
pub const ENTITY_DUPLICATES_TOTAL: &str = "actorhub_entity_duplicates_total";
pub const ENTITY_REJECTED_TOTAL: &str = "actorhub_entity_rejected_total";
pub const ASK_SECONDS: &str = "actorhub_ask_seconds";
pub const ASK_RETRIES_TOTAL: &str = "actorhub_ask_retries_total";
pub const JOURNAL_APPENDS_TOTAL: &str = "actorhub_journal_appends_total";
pub const JOURNAL_APPEND_SECONDS: &str = "actorhub_journal_append_seconds";
pub const JOURNAL_BATCH_EVENTS: &str = "actorhub_journal_batch_events";
pub const JOURNAL_CONFLICTS_TOTAL: &str = "actorhub_journal_conflicts_total";
pub const JOURNAL_LOAD_SECONDS: &str = "actorhub_journal_load_seconds";
pub const STORE_FLUSH_SECONDS: &str = "actorhub_store_flush_seconds";
pub const STORE_FLUSH_WAITERS: &str = "actorhub_store_flush_waiters";
pub const SNAPSHOTS_TOTAL: &str = "actorhub_snapshots_total";
pub const WIRE_DECODE_ERRORS_TOTAL: &str = "actorhub_wire_decode_errors_total";
pub const PARTITION_TAKEOVER_SECONDS: &str = "actorhub_partition_takeover_seconds";
pub const PARTITION_CLAIMS_TOTAL: &str = "actorhub_partition_claims_total";
pub const JOURNAL_FENCED_TOTAL: &str = "actorhub_journal_fenced_total";
pub const JOURNAL_COMPACTIONS_TOTAL: &str = "actorhub_journal_compactions_total";
pub const JOURNAL_COMPACTION_SECONDS: &str = "actorhub_journal_compaction_seconds";
pub const JOURNAL_LOG_OBJECTS_DELETED_TOTAL: &str = "actorhub_journal_log_objects_deleted_total";
pub const STORE_BACKGROUND_BYPASSED_TOTAL: &str = "actorhub_store_background_bypassed_total";
pub const CLUSTER_CONNECTIONS_REFUSED_TOTAL: &str = "actorhub_cluster_connections_refused_total";
pub const MESSAGES_TOO_LARGE_TOTAL: &str = "actorhub_messages_too_large_total";
pub const PROCESS_RESIDENT_BYTES: &str = "actorhub_process_resident_bytes";
pub const MEMORY_PRESSURE: &str = "actorhub_memory_pressure";
pub const REMINDERS_REGISTERED: &str = "actorhub_reminders_registered";
pub const REMINDERS_BACKLOG: &str = "actorhub_reminders_backlog";
pub const REMINDERS_FIRED_TOTAL: &str = "actorhub_reminders_fired_total";
pub const REMINDER_LATENESS_SECONDS: &str = "actorhub_reminder_lateness_seconds";
pub const REMINDER_FIRE_RETRIES_TOTAL: &str = "actorhub_reminder_fire_retries_total";
pub const REMINDERS_REFUSED_TOTAL: &str = "actorhub_reminders_refused_total";

/// Registers help texts with the installed recorder; call once after installing it.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        MEMBERS_UP,
        "Cluster members this node sees up, itself included"
    );
    describe_counter!(
        MEMBERSHIP_TRANSITIONS_TOTAL,
        "Member state changes seen by this node, by member and new state"
    );
    describe_counter!(HEARTBEATS_SENT_TOTAL, "Heartbeat pings sent to peers");
    describe_histogram!(
        HEARTBEAT_RTT_SECONDS,
        metrics::Unit::Seconds,
        "Heartbeat round-trip time"
    );
    describe_counter!(DIALS_TOTAL, "Connection attempts to peers, by result");
    describe_counter!(
        SESSIONS_CLOSED_TOTAL,
        "Cluster sessions this node closed, by reason"
    );
    describe_gauge!(
        ENTITIES_ACTIVE,
        "Entities active on this node (reminder shards not counted)"
    );
    describe_counter!(
        ENTITY_ACTIVATIONS_TOTAL,
        "Entity activations (journal rehydrations), by kind"
    );
    describe_counter!(
        ENTITY_PASSIVATIONS_TOTAL,
        "Entity passivations, by kind and reason"
    );
    describe_counter!(
        ENTITY_RESTARTS_TOTAL,
        "Entity restarts after a failure, by kind"
    );
    describe_counter!(
        ENTITY_MESSAGES_TOTAL,
        "Messages handled by entities, by kind"
    );
    describe_counter!(
        ENTITY_DUPLICATES_TOTAL,
        "Retried messages answered from the journal instead of re-applied"
    );
    describe_counter!(
        ENTITY_REJECTED_TOTAL,
        "Messages refused by entities, by reason"
    );
    describe_histogram!(
        ASK_SECONDS,
        metrics::Unit::Seconds,
        "EntityRef::ask latency, retries included"
    );
    describe_counter!(ASK_RETRIES_TOTAL, "Ask attempts retried, by reason");
    describe_counter!(
        JOURNAL_APPENDS_TOTAL,
        "Node-log objects written (one flush of every entity of the node)"
    );
    describe_histogram!(
        JOURNAL_APPEND_SECONDS,
        metrics::Unit::Seconds,
        "Journal append latency"
    );
    describe_histogram!(JOURNAL_BATCH_EVENTS, "Entity appends per node-log object");
    describe_histogram!(
        STORE_FLUSH_SECONDS,
        metrics::Unit::Seconds,
        "Time of one syncfs of the local object store (group commit, fsync = true)"
    );
    describe_histogram!(
        STORE_FLUSH_WAITERS,
        "Writers made durable by one syncfs of the local object store"
    );
    describe_counter!(
        JOURNAL_CONFLICTS_TOTAL,
        "Appends rejected because another writer held the sequence number"
    );
    describe_histogram!(
        JOURNAL_LOAD_SECONDS,
        metrics::Unit::Seconds,
        "Journal load time at activation"
    );
    describe_counter!(SNAPSHOTS_TOTAL, "Snapshots written");
    describe_counter!(
        WIRE_DECODE_ERRORS_TOTAL,
        "Messages from peers that could not be decoded"
    );
    describe_histogram!(
        PARTITION_TAKEOVER_SECONDS,
        metrics::Unit::Seconds,
        "Time to take a partition over: claim, seals, replay"
    );
    describe_counter!(
        PARTITION_CLAIMS_TOTAL,
        "Partition epochs claimed by this node"
    );
    describe_counter!(
        JOURNAL_FENCED_TOTAL,
        "Partitions this node lost to a fence from a new owner"
    );
    describe_counter!(
        JOURNAL_COMPACTIONS_TOTAL,
        "Partition compactions (checkpoints written)"
    );
    describe_histogram!(
        JOURNAL_COMPACTION_SECONDS,
        metrics::Unit::Seconds,
        "Time of one partition's compaction"
    );
    describe_counter!(
        JOURNAL_LOG_OBJECTS_DELETED_TOTAL,
        "Node-log objects deleted once compacted"
    );
    describe_counter!(
        STORE_BACKGROUND_BYPASSED_TOTAL,
        "Store operations (compaction's deletes) run at normal priority because the store's idle-priority thread made no progress for 250 ms: the node's CPU is saturated"
    );
    describe_counter!(
        CLUSTER_CONNECTIONS_REFUSED_TOTAL,
        "Cluster connections closed before their handshake, by reason"
    );
    describe_counter!(
        MESSAGES_TOO_LARGE_TOTAL,
        "Messages refused because they exceed the cluster message limit, by kind"
    );
    describe_gauge!(
        PROCESS_RESIDENT_BYTES,
        metrics::Unit::Bytes,
        "Resident memory of this node process"
    );
    describe_gauge!(
        MEMORY_PRESSURE,
        "1 while the node is above its memory pressure threshold"
    );
    describe_gauge!(
        REMINDERS_REGISTERED,
        "Durable reminders held by the reminder shards of this node's partitions"
    );
    describe_gauge!(
        REMINDERS_BACKLOG,
        "Reminders due and not yet fired in this node's shards (counted up to 1000 per shard)"
    );
    describe_counter!(
        REMINDERS_FIRED_TOTAL,
        "Reminder firings acknowledged by their entities"
    );
    describe_histogram!(
        REMINDER_LATENESS_SECONDS,
        metrics::Unit::Seconds,
        "How long after its due time a reminder's firing was acknowledged"
    );
    describe_counter!(
        REMINDER_FIRE_RETRIES_TOTAL,
        "Reminder firings that failed and are retried with backoff"
    );
    describe_counter!(
        REMINDERS_REFUSED_TOTAL,
        "Reminder registrations refused because the shard is full (reminders.per_shard_max)"
    );
    // The series that alerts watch (deploy/prometheus/alerts.yaml) exist from the start, at
    // zero: a counter born at its first event hides that event from `increase()`, and a
    // missing series cannot be told from a broken scrape.
    metrics::counter!(JOURNAL_FENCED_TOTAL).increment(0);
    metrics::counter!(JOURNAL_CONFLICTS_TOTAL).increment(0);
    metrics::counter!(JOURNAL_LOG_OBJECTS_DELETED_TOTAL).increment(0);
    metrics::gauge!(MEMORY_PRESSURE).increment(0.0);
}
