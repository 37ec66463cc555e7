//! The cluster: who is in it and who is up (`membership`), who owns what (`placement`), and
//! the port peers connect to (`port`), the membership table in the store (`table`), mutual TLS between nodes (`tls`).

pub mod membership;
pub mod placement;
pub mod port;
pub mod table;
pub mod tls;
