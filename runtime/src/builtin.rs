//! Entity kinds every node hosts, whatever the application: `sys.register`, a durable
//! register (a string and a counter) used to probe the cluster end to end (routing,
//! activation, journaling, failover) by operators, tests and benchmarks. It also takes
//! durable reminders (`RemindAt`) and records each firing, to test them end to end.

use serde::{Deserialize, Serialize};

use crate::entity::{Context, Entity, Request};

/// A durable register: `Set` replaces the value, `Add` moves the counter, `Get` reads both.
pub struct Register {
    node: String,
}

/// Journaled and sent between nodes: variants are appended, never removed or reordered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RegisterCommand {
    Get,
    Set(String),
    Add(i64),
    /// Registers (or replaces) the reminder `name`, due at `due_ms` (unix ms): its firings
    /// are recorded in `RegisterState::fired`. Appended (schema 2).
    RemindAt {
        name: String,
        due_ms: u64,
    },
    /// Reads the register with its recorded firings (`RegisterReply::fired`). Appended.
    Firings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RegisterEvent {
    Set(String),
    Added(i64),
    /// A reminder fired. Appended (schema 2).
    Fired(FiredReminder),
}

/// One recorded firing of a register's reminder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiredReminder {
    pub name: String,
    pub due_ms: u64,
    /// When `on_reminder` ran (unix ms).
    pub fired_at_ms: u64,
    /// The node it ran on.
    pub node: String,
}

/// Firings a register keeps (the oldest go first).
pub const FIRED_RECORDED_MAX: usize = 1024;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RegisterState {
    pub value: String,
    pub counter: i64,
    pub writes: u64,
    /// Appended (schema 2): absent from older snapshots (see `older::State`).
    pub fired: Vec<FiredReminder>,
}

/// The register after the command, and who served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterReply {
    pub value: String,
    pub counter: i64,
    pub writes: u64,
    /// Sequence number of the command's event (the durable head for `Get`).
    pub seq: u64,
    /// The node that served the command.
    pub node: String,
    /// The recorded firings, for `Firings` only (empty otherwise). Appended (schema 2):
    /// absent from replies journaled before it (see `older::Reply`), and left out of the
    /// encoding when empty, so that every other reply is exactly what a node of the previous
    /// build decodes (it refuses bytes after a value it knows).
    pub fired: Vec<FiredReminder>,
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
    const SCHEMA: u32 = 2;
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
            RegisterEvent::Fired(fired) => {
                if state.fired.len() >= FIRED_RECORDED_MAX {
                    state.fired.remove(0);
                }
                state.fired.push(fired.clone());
            }
        }
        state.writes += 1;
    }

    fn handle(
        &mut self,
        state: &RegisterState,
        command: RegisterCommand,
        context: &mut Context<'_, Self>,
    ) -> Self::Reply {
        let mut next = RegisterState {
            value: state.value.clone(),
            counter: state.counter,
            writes: state.writes,
            fired: Vec::new(),
        };
        let seq = match command {
            RegisterCommand::Get => context.durable_head(),
            RegisterCommand::Firings => {
                next.fired.clone_from(&state.fired);
                context.durable_head()
            }
            RegisterCommand::RemindAt { name, due_ms } => {
                context
                    .remind(name, due_ms, None)
                    .map_err(|error| error.to_string())?;
                context.durable_head()
            }
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
            fired: next.fired,
        })
    }

    fn on_reminder(
        &mut self,
        _state: &RegisterState,
        reminder: &crate::reminder::Reminder,
        context: &mut Context<'_, Self>,
    ) {
        // Every firing is recorded, a repeated one too: tests count them (at least once).
        context.persist(RegisterEvent::Fired(FiredReminder {
            name: reminder.name.clone(),
            due_ms: reminder.due_ms,
            fired_at_ms: crate::clock::unix_ms(),
            node: self.node.clone(),
        }));
    }
}

/// Reading what builds before schema 2 wrote: a snapshot's state or a journaled reply ends
/// before the appended `fired` field (the input simply ends: each is one whole encoded value),
/// which then takes its default.
mod older {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::ser::SerializeStruct;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{RegisterReply, RegisterState};

    struct State;

    impl<'de> Visitor<'de> for State {
        type Value = RegisterState;

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("a register's state")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RegisterState, A::Error> {
            let missing = |index| de::Error::invalid_length(index, &"the register's fields");
            Ok(RegisterState {
                value: seq.next_element()?.ok_or_else(|| missing(0))?,
                counter: seq.next_element()?.ok_or_else(|| missing(1))?,
                writes: seq.next_element()?.ok_or_else(|| missing(2))?,
                // Appended: an older snapshot ends here (the read fails at the end of input).
                fired: seq.next_element().ok().flatten().unwrap_or_default(),
            })
        }
    }

    impl<'de> Deserialize<'de> for RegisterState {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_struct(
                "RegisterState",
                &["value", "counter", "writes", "fired"],
                State,
            )
        }
    }

    struct Reply;

    impl<'de> Visitor<'de> for Reply {
        type Value = RegisterReply;

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("a register's reply")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RegisterReply, A::Error> {
            let missing = |index| de::Error::invalid_length(index, &"the reply's fields");
            Ok(RegisterReply {
                value: seq.next_element()?.ok_or_else(|| missing(0))?,
                counter: seq.next_element()?.ok_or_else(|| missing(1))?,
                writes: seq.next_element()?.ok_or_else(|| missing(2))?,
                seq: seq.next_element()?.ok_or_else(|| missing(3))?,
                node: seq.next_element()?.ok_or_else(|| missing(4))?,
                // Appended: an older reply ends here.
                fired: seq.next_element().ok().flatten().unwrap_or_default(),
            })
        }
    }

    impl Serialize for RegisterReply {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let fields = if self.fired.is_empty() { 5 } else { 6 };
            let mut reply = serializer.serialize_struct("RegisterReply", fields)?;
            reply.serialize_field("value", &self.value)?;
            reply.serialize_field("counter", &self.counter)?;
            reply.serialize_field("writes", &self.writes)?;
            reply.serialize_field("seq", &self.seq)?;
            reply.serialize_field("node", &self.node)?;
            if !self.fired.is_empty() {
                reply.serialize_field("fired", &self.fired)?;
            }
            reply.end()
        }
    }

    impl<'de> Deserialize<'de> for RegisterReply {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_struct(
                "RegisterReply",
                &["value", "counter", "writes", "seq", "node", "fired"],
                Reply,
            )
        }
    }

    #[cfg(test)]
    mod tests {
        use serde::Serialize;

        use super::super::{FiredReminder, RegisterReply, RegisterState};
        use crate::codec;

        /// `RegisterState` and `RegisterReply` as builds before schema 2 wrote them.
        #[derive(Serialize)]
        struct StateV1 {
            value: String,
            counter: i64,
            writes: u64,
        }

        #[derive(Serialize)]
        struct ReplyV1 {
            value: String,
            counter: i64,
            writes: u64,
            seq: u64,
            node: String,
        }

        #[test]
        fn what_schema_1_wrote_still_loads_and_the_new_field_round_trips() {
            let old = codec::encode(&StateV1 {
                value: "v".into(),
                counter: 3,
                writes: 2,
            });
            let state: RegisterState = codec::decode(&old, "state").expect("an old snapshot");
            assert_eq!(
                (state.value.as_str(), state.counter, state.writes),
                ("v", 3, 2)
            );
            assert!(state.fired.is_empty());
            let old: Result<ReplyV1, String> = Ok(ReplyV1 {
                value: "v".into(),
                counter: 3,
                writes: 2,
                seq: 9,
                node: "n1".into(),
            });
            let reply: Result<RegisterReply, String> =
                codec::decode(&codec::encode(&old), "reply").expect("an old reply");
            let reply = reply.expect("ok");
            assert_eq!(reply.seq, 9);
            assert_eq!(
                codec::encode(&Ok::<_, String>(reply.clone())),
                codec::encode(&old),
                "a reply without firings is encoded as the previous build encoded it"
            );
            let with_firing = RegisterReply {
                fired: vec![FiredReminder {
                    name: "r".into(),
                    due_ms: 1,
                    fired_at_ms: 2,
                    node: "n1".into(),
                }],
                ..reply
            };
            let back: RegisterReply =
                codec::decode(&codec::encode(&with_firing), "reply").expect("round trip");
            assert_eq!(back, with_firing);

            let fired = FiredReminder {
                name: "r".into(),
                due_ms: 5,
                fired_at_ms: 6,
                node: "n1".into(),
            };
            let state = RegisterState {
                fired: vec![fired.clone()],
                ..RegisterState::default()
            };
            let back: RegisterState =
                codec::decode(&codec::encode(&state), "state").expect("round trip");
            assert_eq!(back.fired, vec![fired]);
        }
    }
}
