//! The cluster: who is in it and who is up (`membership`), who owns what (`placement`), and
//! the port peers connect to (`port`), mutual TLS between nodes (`tls`).

pub mod membership;
pub mod placement;
pub mod port;
pub mod tls;
