//! A real EVM node for tests and benchmarks: ganache 7 (from npm; `scripts/test.sh` installs
//! it into `target/test-tools`, or `ANODE_GANACHE` names the command) on a free loopback port,
//! driven over JSON-RPC: blocks with transactions, `evm_snapshot` / `evm_revert` for real
//! reorganisations, a minimal ERC-20 token. Self-contained: the benchmarks include it by path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::poll::until;

/// How long ganache gets to start, or a transaction to be mined.
const LIMIT: Duration = Duration::from_secs(60);

/// A ganache 7 process on a free loopback port, killed when dropped.
pub struct Ganache {
    child: Child,
    pub url: String,
    http: reqwest::Client,
    /// Accounts ganache unlocked (deterministic wallet): transfers go from the first.
    pub accounts: Vec<String>,
}

impl Ganache {
    pub async fn start() -> Ganache {
        let program = std::env::var_os("ANODE_GANACHE").map_or_else(
            || {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/test-tools/ganache/node_modules/.bin/ganache")
            },
            PathBuf::from,
        );
        assert!(
            program.exists(),
            "ganache is missing at {}: run scripts/test.sh (it installs ganache@7.9.2 into \
             target/test-tools) or set ANODE_GANACHE to a ganache 7 command",
            program.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&program)
            .args(["--server.host", "127.0.0.1", "--server.port"])
            .arg(port.to_string())
            .args([
                "--wallet.deterministic",
                "--logging.quiet",
                "--chain.chainId",
                "1337",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let mut ganache = Ganache {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            accounts: Vec::new(),
        };
        let accounts = until("ganache to answer", LIMIT, || async {
            ganache
                .try_rpc("eth_accounts", json!([]))
                .await
                .ok_or_else(|| "no answer yet".to_owned())
        })
        .await;
        ganache.accounts = serde_json::from_value(accounts).unwrap();
        ganache
    }

    async fn try_rpc(&self, method: &str, params: Value) -> Option<Value> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let reply: Value = self
            .http
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        assert!(reply["error"].is_null(), "{method}: {reply}");
        Some(reply["result"].clone())
    }

    pub async fn rpc(&self, method: &str, params: Value) -> Value {
        self.try_rpc(method, params)
            .await
            .unwrap_or_else(|| panic!("{method}: ganache did not answer"))
    }

    pub async fn head(&self) -> u64 {
        let head = self.rpc("eth_blockNumber", json!([])).await;
        u64::from_str_radix(head.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    }

    /// The chain as the node has it now: the hash at every height.
    pub async fn chain(&self) -> BTreeMap<u64, String> {
        let mut chain = BTreeMap::new();
        for n in 0..=self.head().await {
            let block = self
                .rpc("eth_getBlockByNumber", json!([format!("{n:#x}"), false]))
                .await;
            chain.insert(n, block["hash"].as_str().unwrap().to_owned());
        }
        chain
    }

    /// `count` blocks, each with one transfer of a value no other block here carries (so
    /// the branches differ in content, not only in time).
    pub async fn mine(&self, count: u64, values: &mut u64) {
        for _ in 0..count {
            *values += 1;
            let tx = json!({"from": self.accounts[0], "to": self.accounts[1],
                            "value": format!("{:#x}", *values)});
            self.send(tx).await;
        }
    }

    /// Send a transaction from an unlocked account and wait for its block; its hash.
    pub async fn send(&self, tx: Value) -> String {
        let before = self.head().await;
        let hash = self.rpc("eth_sendTransaction", json!([tx])).await;
        until("the transaction to be mined", LIMIT, || async {
            if self.head().await > before {
                Ok(())
            } else {
                Err("not mined yet".to_owned())
            }
        })
        .await;
        hash.as_str().unwrap().to_owned()
    }

    /// Deploy a minimal token: `transfer(address to, uint256 amount)` logs the ERC-20
    /// `Transfer(caller, to, amount)` (it keeps no balances). Written in EVM bytecode: the
    /// runtime stores the amount at memory 0, then `LOG3(0, 32, Transfer, CALLER, to)`.
    pub async fn deploy_token(&self) -> String {
        const TRANSFER: &str = "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";
        // amount = calldata[36..68] to memory 0; to = calldata[4..36]; CALLER; topic; LOG3.
        let runtime = format!("602435600052600435337f{TRANSFER}60206000a300");
        // Copy the runtime (0x31 bytes, after this 0x0b-byte prefix) to memory and return it.
        let init = "603180600b6000396000f3";
        let tx = json!({"from": self.accounts[0], "data": format!("0x{init}{runtime}"),
                        "gas": "0x100000"});
        let hash = self.send(tx).await;
        let receipt = self.rpc("eth_getTransactionReceipt", json!([hash])).await;
        receipt["contractAddress"].as_str().unwrap().to_owned()
    }

    /// `token.transfer(to, amount)` from the first account.
    pub async fn transfer(&self, token: &str, to: &str, amount: u64) {
        let data = format!("0xa9059cbb{:0>64}{amount:064x}", &to[2..]);
        let tx = json!({"from": self.accounts[0], "to": token, "data": data, "gas": "0x100000"});
        self.send(tx).await;
    }

    pub async fn snapshot(&self) -> Value {
        self.rpc("evm_snapshot", json!([])).await
    }

    pub async fn revert(&self, snapshot: Value) {
        assert_eq!(self.rpc("evm_revert", json!([snapshot])).await, json!(true));
    }
}

impl Drop for Ganache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
