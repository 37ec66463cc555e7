//! A node of the next cluster protocol, for the mixed-version test (`tests/wire_next.rs`).
//!
//! Built only with the `wire-next` feature (`cargo build -p runtime --example wire_next
//! --features wire-next`), which makes this build speak protocol 3: its envelopes carry one
//! field more. Usage: `wire_next <cluster.toml> <node id> <asks>`. It joins the cluster the
//! file describes, serves its share of `sys.register` entities, waits until every configured
//! peer is up, asks `<asks>` registers `next-<i>` to add 1 (wherever they live), and prints
//! one line per step:
//!
//! ```text
//! protocol 3
//! peer n1 protocol 2
//! asked next-0 served-by n2
//! done
//! ```
//!
//! It then serves until its standard input closes.

use std::io::BufRead;
use std::time::Duration;

use runtime::builtin::{Register, RegisterCommand};
use runtime::config::{ClusterConfig, ConfigOverrides};
use runtime::{MemberState, NodeBuilder};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: wire_next <cluster.toml> <node id> <asks>";
    let path = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let id = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let asks: usize = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let text = std::fs::read_to_string(&path)?;
    let config = ClusterConfig::from_toml(&text, "wire_next", ConfigOverrides::default())?;
    let node = NodeBuilder::new(config, &id)?.start().await?;
    let runtime = node.runtime();
    println!("protocol {}", runtime::codec::PROTOCOL);

    let mut views = runtime.watch_view();
    loop {
        let all_up = {
            let view = views.borrow_and_update();
            view.members
                .iter()
                .all(|member| member.state == MemberState::Up)
        };
        if all_up {
            break;
        }
        views.changed().await?;
    }
    // The protocol of a pair is settled by the peer's first heartbeat, which made it up.
    for member in runtime
        .view()
        .members
        .iter()
        .filter(|member| member.id != id)
    {
        println!("peer {} protocol {}", member.id, member.protocol);
    }
    for index in 0..asks {
        let reply = runtime
            .entity::<Register>(format!("next-{index}"))
            .ask_with(RegisterCommand::Add(1), Duration::from_secs(20), None)
            .await?
            .map_err(|refusal| anyhow::anyhow!(refusal))?;
        println!("asked next-{index} served-by {}", reply.node);
    }
    println!("done");

    // Serve until the test closes our standard input.
    tokio::task::spawn_blocking(|| {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() {
                break;
            }
        }
    })
    .await?;
    node.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
