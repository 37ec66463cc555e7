//! The cluster: who is in it and who is up (`membership`), who owns what (`placement`), and
//! the port peers connect to (`port`).

pub mod membership;
pub mod placement;
pub mod port;
