//! Entity kinds every node hosts, whatever the application: `sys.register`, a durable
//! register (a string and a counter) used to probe the cluster end to end (routing,
//! activation, journaling, failover) by operators, tests and benchmarks.

use serde::{Deserialize, Serialize};

use crate::entity::{Context, Entity, Request};

/// A durable register: `Set` replaces the value, `Add` moves the counter, `Get` reads both.
pub struct Register {
    node: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RegisterCommand {
    Get,
    Set(String),
    Add(i64),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RegisterEvent {
    Set(String),
    Added(i64),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegisterState {
    pub value: String,
    pub counter: i64,
    pub writes: u64,
}

/// The register after the command, and who served it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterReply {
    pub value: String,
    pub counter: i64,
    pub writes: u64,
    /// Sequence number of the command's event (the durable head for `Get`).
    pub seq: u64,
    /// The node that served the command.
    pub node: String,
}

/// The register's commands are its requests: each gets the register as it is after it.
impl Request<Register> for RegisterCommand {
    type Reply = Result<RegisterReply, String>;

    fn into_command(self) -> RegisterCommand {
        self
    }

    fn from_reply(reply: Result<RegisterReply, String>) -> Option<Self::Reply> {
        Some(reply)
    }
}

/// Longest value a register holds.
pub const REGISTER_VALUE_BYTES_MAX: usize = 64 * 1024;

impl Entity for Register {
    const KIND: &'static str = "sys.register";
    type Command = RegisterCommand;
    type Reply = Result<RegisterReply, String>;
    type Event = RegisterEvent;
    type State = RegisterState;
    type Deps = String;

    fn activate(_key: &str, node: &String) -> Self {
        Self { node: node.clone() }
    }

    fn apply(state: &mut RegisterState, _seq: u64, event: &RegisterEvent) {
        match event {
            RegisterEvent::Set(value) => state.value.clone_from(value),
            RegisterEvent::Added(delta) => state.counter = state.counter.saturating_add(*delta),
        }
        state.writes += 1;
    }

    fn handle(
        &mut self,
        state: &RegisterState,
        command: RegisterCommand,
        context: &mut Context<'_, Self>,
    ) -> Self::Reply {
        let mut next = state.clone();
        let seq = match command {
            RegisterCommand::Get => context.durable_head(),
            RegisterCommand::Set(value) => {
                if value.len() > REGISTER_VALUE_BYTES_MAX {
                    return Err(format!(
                        "value of {} bytes exceeds {REGISTER_VALUE_BYTES_MAX}",
                        value.len()
                    ));
                }
                let event = RegisterEvent::Set(value);
                Self::apply(&mut next, 0, &event);
                context.persist(event)
            }
            RegisterCommand::Add(delta) => {
                let event = RegisterEvent::Added(delta);
                Self::apply(&mut next, 0, &event);
                context.persist(event)
            }
        };
        Ok(RegisterReply {
            value: next.value,
            counter: next.counter,
            writes: next.writes,
            seq,
            node: self.node.clone(),
        })
    }
}
