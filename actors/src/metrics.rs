//! Every metric the application actors record, named in one place.

pub const SESSIONS_ACTIVE: &str = "actorhub_sessions_active";
pub const SESSIONS_HIBERNATED: &str = "actorhub_sessions_hibernated";
pub const SESSION_WAKES_TOTAL: &str = "actorhub_session_wakes_total";
pub const FRAMES_IN_TOTAL: &str = "actorhub_ws_frames_in_total";
pub const FRAMES_OUT_TOTAL: &str = "actorhub_ws_frames_out_total";
pub const FRAME_ERRORS_TOTAL: &str = "actorhub_ws_errors_total";
pub const SLOW_CLIENTS_TOTAL: &str = "actorhub_ws_slow_clients_total";
pub const ROOM_REJOINS_TOTAL: &str = "actorhub_room_rejoins_total";

pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(SESSIONS_ACTIVE, "WebSocket sessions on this node");
    describe_gauge!(
        SESSIONS_HIBERNATED,
        "WebSocket sessions on this node whose actor is stopped until a message needs it"
    );
    describe_counter!(
        SESSION_WAKES_TOTAL,
        "Hibernated sessions whose actor was started again"
    );
    describe_counter!(FRAMES_IN_TOTAL, "Frames received from WebSocket clients");
    describe_counter!(
        FRAMES_OUT_TOTAL,
        "Frames written to WebSocket clients (counted per thread in batches of 64)"
    );
    describe_counter!(FRAME_ERRORS_TOTAL, "Error frames sent to clients, by code");
    describe_counter!(
        SLOW_CLIENTS_TOTAL,
        "Clients disconnected because their outbound queue was full"
    );
    describe_counter!(
        ROOM_REJOINS_TOTAL,
        "Rooms rejoined by sessions after their owner changed"
    );
    // Exported from the start, at zero, for the dashboard and alerts (deploy/): a counter born
    // at its first event hides that event from `increase()`.
    metrics::gauge!(SESSIONS_ACTIVE).increment(0.0);
    metrics::gauge!(SESSIONS_HIBERNATED).increment(0.0);
    metrics::counter!(SESSION_WAKES_TOTAL).increment(0);
    metrics::counter!(FRAMES_IN_TOTAL).increment(0);
    metrics::counter!(FRAMES_OUT_TOTAL).increment(0);
    metrics::counter!(SLOW_CLIENTS_TOTAL).increment(0);
}
