//! A TCP proxy on loopback that a test can cut, to break the connections between two nodes
//! while both stay up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::cluster::{NodeOptions, NodeProc};

/// A TCP proxy on loopback that can be cut: while cut, open connections are closed and new
/// ones are closed as soon as they are accepted.
pub struct Proxy {
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(port: u16, target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let task = tokio::spawn({
            let (cut, connections) = (cut.clone(), connections.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    // Checked and registered under the lock `cut` takes: no connection
                    // slips past a cut.
                    let mut open = connections.lock().unwrap();
                    if cut.load(Relaxed) {
                        continue;
                    }
                    let pipe = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    open.retain(|c| !c.is_finished());
                    open.push(pipe);
                }
            }
        });
        Proxy {
            cut,
            connections,
            task,
        }
    }

    /// Close every connection and refuse new ones until [`Proxy::mend`].
    pub fn cut(&self) {
        let mut open = self.connections.lock().unwrap();
        self.cut.store(true, Relaxed);
        for connection in open.drain(..) {
            connection.abort();
        }
    }

    pub fn mend(&self) {
        self.cut.store(false, Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// Two `anode up` nodes, `<prefix>1` and `<prefix>2` (on PostgreSQL at `postgres`, else each
/// on its embedded store, both with the TOML `extra`), the second reaching the first's API —
/// and so its record stream — only through a [`Proxy`] the test can cut. Returns once they
/// see each other.
pub async fn two_nodes_behind_proxy(
    root: &std::path::Path,
    prefix: &str,
    postgres: Option<&str>,
    extra: &str,
) -> (NodeProc, Proxy, NodeProc) {
    let (api_port, proxy_port) = (super::free_port(), super::free_port());
    let first = NodeProc::start(
        root,
        &format!("{prefix}1"),
        &NodeOptions {
            postgres: postgres.map(str::to_owned),
            // Other nodes reach this API through the proxy.
            api_section: Some(format!(
                "bind = \"127.0.0.1:{api_port}\"\nadvertise = \"127.0.0.1:{proxy_port}\""
            )),
            extra: extra.to_owned(),
            ..NodeOptions::default()
        },
    );
    let proxy = Proxy::start(proxy_port, ([127, 0, 0, 1], api_port).into()).await;
    let second = NodeProc::start(
        root,
        &format!("{prefix}2"),
        &NodeOptions {
            seeds: vec![first.gossip.clone()],
            postgres: postgres.map(str::to_owned),
            extra: extra.to_owned(),
            ..NodeOptions::default()
        },
    );
    super::until(
        "the two nodes to see each other",
        std::time::Duration::from_secs(60),
        || async {
            let live = super::cluster::live_members(&second).await;
            if live.len() == 2 {
                Ok(())
            } else {
                Err(format!("{live:?}"))
            }
        },
    )
    .await;
    (first, proxy, second)
}
