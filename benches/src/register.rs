//! Calling the built-in `sys.register` entity with both failure layers (the runtime's and the
//! register's own refusal) as one `anyhow` error.

use std::time::Duration;

use anyhow::Context;
use runtime::EntityRef;
use runtime::builtin::{Register, RegisterCommand, RegisterReply};

/// Asks `register` with an explicit deadline (retries on a new owner included).
pub async fn ask_register(
    register: &EntityRef<Register>,
    command: RegisterCommand,
    timeout: Duration,
) -> anyhow::Result<RegisterReply> {
    register
        .ask_with(command, timeout, None)
        .await
        .with_context(|| format!("ask {}", register.id()))?
        .map_err(|refused| anyhow::anyhow!("{} refused the command: {refused}", register.id()))
}
