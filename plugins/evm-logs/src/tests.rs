use super::*;
use anode_plugin_sdk::testing;

const URL: &str = "http://127.0.0.1:8545";
const TOKEN: &str = "0xcfeb869f69431e42cdb54a4f4f105c19c080a601";
const ALICE: &str = "0x90f8bf6a479f320ead074411a4b0e7944ea8c9c1";
const BOB: &str = "0xffcf8fdee72ac11b5c542428b35eef5769c409f0";

fn open(extra: &str, cursor: Option<&str>) -> EvmLogs {
    let config = format!(r#"{{"url":"{URL}"{extra}}}"#);
    match EvmLogs::open(&config, cursor) {
        Ok(c) => c,
        Err(e) => panic!("{config}: {e}"),
    }
}

fn hash(branch: char, number: u64) -> String {
    match branch {
        'a' => format!("0x{number:064x}"),
        other => format!("0x{:02x}{number:062x}", other as u8),
    }
}

fn topic(address: &str) -> String {
    format!("0x{:0>64}", &address[2..])
}

fn head(number: u64) -> HttpResponse {
    let body = json!({"jsonrpc": "2.0", "id": 1, "result": format!("{number:#x}")});
    HttpResponse::ok("head", &body.to_string())
}

/// The header of block `number` on a branch that left `a` after `fork`.
fn header(number: u64, branch: char, fork: u64) -> HttpResponse {
    let on = |n: u64| if n > fork { branch } else { 'a' };
    let body = json!({"jsonrpc": "2.0", "id": 1, "result": {
        "number": format!("{number:#x}"), "hash": hash(on(number), number),
        "parentHash": hash(on(number - 1), number - 1), "transactions": []}});
    HttpResponse::ok(&format!("block:{number}"), &body.to_string())
}

/// An ERC-20 transfer of `value` from Alice to Bob in block `number` (hash `block_hash`).
fn transfer(number: u64, block_hash: &str, index: u64, value: u64) -> Value {
    json!({"address": TOKEN, "topics": [TRANSFER, topic(ALICE), topic(BOB)],
           "data": format!("0x{value:064x}"), "blockNumber": format!("{number:#x}"),
           "blockHash": block_hash, "transactionHash": format!("0x{:064x}", number * 100 + index),
           "transactionIndex": "0x0", "logIndex": format!("{index:#x}"), "removed": false})
}

fn answer(tag: &str, logs: Vec<Value>) -> HttpResponse {
    let body = json!({"jsonrpc": "2.0", "id": 1, "result": logs});
    HttpResponse::ok(tag, &body.to_string())
}

fn tags(out: &Output) -> Vec<String> {
    out.requests.iter().map(|r| r.tag.clone()).collect()
}

/// Each event as `<fork step> <block>/<log index>`.
fn steps(out: &Output) -> Vec<String> {
    testing::payloads(&out.events)
        .iter()
        .map(|p| {
            format!(
                "{} {}/{}",
                p["fork_step"].as_str().unwrap(),
                p["block_number"],
                p["log_index"]
            )
        })
        .collect()
}

fn next_of(out: &Output) -> u64 {
    let cursor: Value = serde_json::from_str(out.cursor.as_deref().unwrap()).unwrap();
    cursor["next"].as_u64().unwrap()
}

#[test]
fn final_blocks_come_in_parallel_ranges_emitted_in_order() {
    let mut c = open(
        r#","start_block":0,"max_range":10,"parallel":2,"finality_depth":5,"keep_blocks":8"#,
        None,
    );
    let out = testing::responses(&mut c, &[head(40)]);
    assert_eq!(tags(&out), ["range:0:9", "range:10:19"]);
    let body: Value = serde_json::from_slice(out.requests[0].body.as_ref().unwrap()).unwrap();
    assert_eq!(body["method"], "eth_getLogs");
    assert_eq!(
        body["params"][0],
        json!({"fromBlock": "0x0", "toBlock": "0x9"})
    );
    // The later range answers first: it waits.
    let out = testing::responses(
        &mut c,
        &[answer(
            "range:10:19",
            vec![transfer(12, &hash('a', 12), 0, 5)],
        )],
    );
    assert!(out.events.is_empty() && out.cursor.is_none());
    assert!(tags(&out).is_empty(), "two ranges are already asked for");
    let out = testing::responses(
        &mut c,
        &[answer("range:0:9", vec![transfer(3, &hash('a', 3), 1, 7)])],
    );
    assert_eq!(steps(&out), ["irreversible 3/1", "irreversible 12/0"]);
    assert_eq!(next_of(&out), 20);
    // Up to the depth of finality: 35.
    assert_eq!(tags(&out), ["range:20:29", "range:30:35"]);
    let event = &out.events[1];
    assert_eq!(event.key.as_deref(), Some(TOKEN));
    assert_eq!(
        event.upstream_id.as_deref(),
        Some(format!("final:12:{}:0", hash('a', 12)).as_str())
    );
    let p = &testing::payloads(&out.events)[1];
    assert_eq!(
        p["event"],
        json!({"standard": "erc20", "name": "Transfer", "from": ALICE, "to": BOB, "value": "5"})
    );
}

#[test]
fn a_range_refused_as_too_large_is_asked_in_halves_and_a_rate_limit_again_later() {
    let mut c = open(
        r#","start_block":0,"max_range":10,"parallel":1,"finality_depth":5,"keep_blocks":8"#,
        None,
    );
    testing::responses(&mut c, &[head(20)]);
    let refused = json!({"jsonrpc": "2.0", "id": 1,
        "error": {"code": -32005, "message": "query returned more than 10000 results"}});
    let out = testing::responses(
        &mut c,
        &[HttpResponse::ok("range:0:9", &refused.to_string())],
    );
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(tags(&out), ["range:0:4", "range:5:9"]);
    let limited = json!({"jsonrpc": "2.0", "id": 1,
        "error": {"code": -32005, "message": "daily request count exceeded, request rate limited"}});
    let out = testing::responses(
        &mut c,
        &[HttpResponse::ok("range:5:9", &limited.to_string())],
    );
    assert!(
        matches!(out.errors[..], [PluginError::Retryable(_)]),
        "{:?}",
        out.errors
    );
    assert!(tags(&out).is_empty());
    let out = testing::responses(&mut c, &[answer("range:0:4", vec![])]);
    assert_eq!(next_of(&out), 5);
    // The next head asks for the failed range again; later ranges are half as long.
    let out = testing::responses(&mut c, &[head(20)]);
    assert_eq!(tags(&out), ["range:5:9"]);
    let out = testing::responses(&mut c, &[answer("range:5:9", vec![])]);
    assert_eq!(tags(&out), ["range:10:14"]);
}

/// A connector that followed blocks 10..=12 of branch `a` near the head, one transfer in
/// each of 11 and 12 (two in 12).
fn near_the_head() -> EvmLogs {
    let mut c = open(
        r#","start_block":10,"finality_depth":3,"keep_blocks":8"#,
        None,
    );
    let out = testing::responses(&mut c, &[head(12)]);
    assert_eq!(tags(&out), ["block:10"]);
    let out = testing::responses(&mut c, &[header(10, 'a', 99)]);
    assert_eq!(tags(&out), [format!("logs:10:{}", hash('a', 10))]);
    let body: Value = serde_json::from_slice(out.requests[0].body.as_ref().unwrap()).unwrap();
    assert_eq!(body["params"][0], json!({"blockHash": hash('a', 10)}));
    let out = testing::responses(&mut c, &[answer(&tags(&out)[0], vec![])]);
    assert_eq!(tags(&out), ["block:11"]);
    testing::responses(&mut c, &[header(11, 'a', 99)]);
    let tag = format!("logs:11:{}", hash('a', 11));
    let out = testing::responses(
        &mut c,
        &[answer(&tag, vec![transfer(11, &hash('a', 11), 0, 1)])],
    );
    assert_eq!(steps(&out), ["new 11/0"]);
    testing::responses(&mut c, &[header(12, 'a', 99)]);
    let tag = format!("logs:12:{}", hash('a', 12));
    let logs = vec![
        transfer(12, &hash('a', 12), 1, 3),
        transfer(12, &hash('a', 12), 0, 2),
    ];
    let out = testing::responses(&mut c, &[answer(&tag, logs)]);
    assert_eq!(steps(&out), ["new 12/0", "new 12/1"]);
    assert_eq!(next_of(&out), 13);
    c
}

#[test]
fn near_the_head_a_fork_undoes_the_logs_of_every_block_that_left() {
    let mut c = near_the_head();
    // Branch b left a after 10 and reached 13.
    let out = testing::responses(&mut c, &[head(13)]);
    assert_eq!(tags(&out), ["block:13"]);
    let out = testing::responses(&mut c, &[header(13, 'b', 10)]);
    assert_eq!(steps(&out), ["undo 12/1", "undo 12/0"]);
    assert_eq!(out.events[0].key.as_deref(), Some(TOKEN));
    assert_eq!(
        out.events[0].upstream_id.as_deref(),
        Some(format!("undo:1:12:{}:1", hash('a', 12)).as_str())
    );
    assert_eq!(tags(&out), ["block:12"]);
    let out = testing::responses(&mut c, &[header(12, 'b', 10)]);
    assert_eq!(steps(&out), ["undo 11/0"]);
    let out = testing::responses(&mut c, &[header(11, 'b', 10)]);
    assert!(out.events.is_empty());
    let tag = format!("logs:11:{}", hash('b', 11));
    assert_eq!(tags(&out), std::slice::from_ref(&tag));
    // A log that names another block than the one asked for is refused.
    let out = testing::responses(
        &mut c,
        &[answer(&tag, vec![transfer(11, &hash('a', 11), 0, 1)])],
    );
    assert!(
        matches!(out.errors[..], [PluginError::BadInput(_)]),
        "{:?}",
        out.errors
    );
    let out = testing::responses(
        &mut c,
        &[answer(&tag, vec![transfer(11, &hash('b', 11), 0, 9)])],
    );
    assert_eq!(steps(&out), ["new 11/0"]);
    assert_eq!(
        out.events[0].upstream_id.as_deref(),
        Some(format!("11:{}:0:2", hash('b', 11)).as_str())
    );
    assert_eq!(tags(&out), ["block:12"]);
}

#[test]
fn a_tip_replaced_at_the_same_height_is_found_by_asking_for_it_again() {
    let mut c = near_the_head();
    let out = testing::responses(&mut c, &[head(12)]);
    assert_eq!(tags(&out), ["block:12"]);
    let out = testing::responses(&mut c, &[header(12, 'b', 11)]);
    assert_eq!(steps(&out), ["undo 12/1", "undo 12/0"]);
    assert_eq!(tags(&out), [format!("logs:12:{}", hash('b', 12))]);
}

#[test]
fn logs_deep_enough_are_confirmed_irreversible_and_blocks_without_logs_need_no_call() {
    let mut c = near_the_head();
    // Head 15: blocks up to 12 are 3 deep. 10 has no logs; 11 is asked for again by hash.
    let out = testing::responses(&mut c, &[head(15)]);
    assert_eq!(
        tags(&out),
        [format!("final:11:{}", hash('a', 11)), "block:13".to_owned()]
    );
    let out = testing::responses(
        &mut c,
        &[answer(
            &format!("final:11:{}", hash('a', 11)),
            vec![transfer(11, &hash('a', 11), 0, 1)],
        )],
    );
    assert_eq!(steps(&out), ["irreversible 11/0"]);
    assert_eq!(
        out.events[0].upstream_id.as_deref(),
        Some(format!("final:11:{}:0", hash('a', 11)).as_str())
    );
    assert_eq!(tags(&out), [format!("final:12:{}", hash('a', 12))]);
    // A fork below what is irreversible stops the source, saying so.
    let out = testing::responses(&mut c, &[header(11, 'b', 10)]);
    assert!(
        matches!(&out.errors[..], [PluginError::Fatal(m)] if m.contains("finality_depth")),
        "{:?}",
        out.errors
    );
}

#[test]
fn final_only_reads_ranges_and_never_a_header() {
    let mut c = open(
        r#","start_block":0,"finality_depth":5,"keep_blocks":8,"final_only":true"#,
        None,
    );
    let out = testing::responses(&mut c, &[head(8)]);
    assert_eq!(tags(&out), ["range:0:3"]);
    let out = testing::responses(&mut c, &[answer("range:0:3", vec![])]);
    assert!(tags(&out).is_empty());
    assert!(tags(&testing::responses(&mut c, &[head(8)])).is_empty());
    assert_eq!(tags(&testing::responses(&mut c, &[head(9)])), ["range:4:4"]);
}

#[test]
fn erc20_and_erc721_transfers_and_approvals_are_decoded_by_topic() {
    let word = |n: u64| format!("0x{n:064x}");
    let t = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (alice, bob) = (topic(ALICE), topic(BOB));
    assert_eq!(
        decode(&t(&[APPROVAL, &alice, &bob]), &word(1_000_000)).unwrap(),
        json!({"standard": "erc20", "name": "Approval", "owner": ALICE, "spender": BOB, "value": "1000000"})
    );
    assert_eq!(
        decode(&t(&[TRANSFER, &alice, &bob, &word(42)]), "0x").unwrap(),
        json!({"standard": "erc721", "name": "Transfer", "from": ALICE, "to": BOB, "token_id": "42"})
    );
    assert_eq!(
        decode(&t(&[APPROVAL, &alice, &bob, &word(7)]), "0x").unwrap()["approved"],
        BOB
    );
    // A value beyond 64 bits arrives exactly.
    let max = format!("0x{}", "f".repeat(64));
    assert_eq!(
        decode(&t(&[TRANSFER, &alice, &bob]), &max).unwrap()["value"],
        "115792089237316195423570985008687907853269984665640564039457584007913129639935"
    );
    // Anything else stays raw: another event, a topic that is no address, a wrong shape.
    let other = "0x1c411e9a96e071241c2f21f7726b17ae89e3cab4c78be50e062b03a9fffbbad1";
    assert_eq!(decode(&t(&[other, &alice, &bob]), &word(1)), None);
    assert_eq!(
        decode(
            &t(&[TRANSFER, &word(u64::MAX).replace("0x0", "0x1"), &bob]),
            &word(1)
        ),
        None
    );
    assert_eq!(decode(&t(&[TRANSFER, &alice, &bob]), "0x"), None);
    assert_eq!(decode(&t(&[TRANSFER]), &word(1)), None);
}

#[test]
fn bad_config_or_cursor_is_fatal_and_says_why() {
    match EvmLogs::open(r#"{"url":"ws://h"}"#, None) {
        Err(PluginError::Fatal(m)) => assert!(m.starts_with("invalid config"), "{m}"),
        other => panic!("ws:// accepted: {:?}", other.err()),
    }
    for extra in [
        r#","address":"0x12""#,
        r#","address":["0xcfeb869f69431e42cdb54a4f4f105c19c080a60z"]"#,
        r#","topics":["0x1"]"#,
        r#","topics":[null,null,null,null,null]"#,
        r#","topics":[5]"#,
        r#","parallel":0"#,
        r#","finality_depth":200"#,
        r#","blocks":3"#,
        r#","events":["Transfer(address[] to)"]"#,
    ] {
        let config = format!(r#"{{"url":"{URL}"{extra}}}"#);
        match EvmLogs::open(&config, None) {
            Err(PluginError::Fatal(m)) => assert!(m.starts_with("invalid config"), "{m}"),
            Err(other) => panic!("{config}: {other}"),
            Ok(_) => panic!("{config} was accepted"),
        }
    }
    for cursor in [
        "12",
        r#"{"next":1,"generation":0,"final_next":3,"kept":[]}"#,
    ] {
        match EvmLogs::open(&format!(r#"{{"url":"{URL}"}}"#), Some(cursor)) {
            Err(PluginError::Fatal(m)) => assert!(m.starts_with("invalid cursor"), "{m}"),
            other => panic!("{cursor}: {:?}", other.err()),
        }
    }
}

#[test]
fn the_cursor_carries_the_logs_to_undo_across_a_restart() {
    let mut c = near_the_head();
    let out = testing::responses(&mut c, &[head(12)]);
    assert_eq!(tags(&out), ["block:12"]);
    let cursor = c.cursor().unwrap();
    let mut again = open(r#","finality_depth":3,"keep_blocks":8"#, Some(&cursor));
    testing::responses(&mut again, &[head(13)]);
    let out = testing::responses(&mut again, &[header(13, 'b', 11)]);
    assert_eq!(steps(&out), ["undo 12/1", "undo 12/0"]);
}

#[test]
fn an_event_named_in_the_configuration_is_decoded_by_its_signature() {
    let mut c = open(
        r#","start_block":0,"finality_depth":0,"keep_blocks":8,
           "events":["Deposit(address indexed dst, uint256 wad)"]"#,
        None,
    );
    testing::responses(&mut c, &[head(0)]);
    // keccak256("Deposit(address,uint256)"), the WETH deposit event.
    let deposit = "0xe1fffcc4923d04b559f4d29a8bfc6cda04eb5b0d3c460751c2402c5c5cc9109c";
    let mut log = transfer(0, &hash('a', 0), 0, 42);
    log["topics"] = json!([deposit, topic(BOB)]);
    let out = testing::responses(&mut c, &[answer("range:0:0", vec![log])]);
    assert_eq!(
        testing::payloads(&out.events)[0]["event"],
        json!({"name": "Deposit", "signature": "Deposit(address,uint256)",
               "args": {"dst": BOB, "wad": "42"}})
    );
}

#[test]
fn a_range_that_got_no_answer_is_asked_again_at_the_next_head_and_follow_ups_are_bounded() {
    let mut c = open(
        r#","start_block":0,"max_range":1,"parallel":2,"finality_depth":0,"keep_blocks":8"#,
        None,
    );
    assert_eq!(
        tags(&testing::responses(&mut c, &[head(1000)])),
        ["range:0:0", "range:1:1"]
    );
    // The round was cut short: no answer. The next head asks for both again.
    assert_eq!(
        tags(&testing::responses(&mut c, &[head(1000)])),
        ["range:0:0", "range:1:1"]
    );
    // Each answer asks for one more range, up to 20 per range at once (40) before a head.
    let mut asked = 0;
    let mut pending = vec!["range:0:0".to_owned(), "range:1:1".to_owned()];
    while let Some(tag) = pending.pop() {
        let out = testing::responses(&mut c, &[answer(&tag, vec![])]);
        asked += out.requests.len();
        pending.extend(tags(&out));
    }
    assert_eq!(asked, 40);
    assert_eq!(
        tags(&testing::responses(&mut c, &[head(1000)])).len(),
        2,
        "a head goes on"
    );
}

#[test]
fn the_manifest_example_opens() {
    let manifest = EvmLogs::manifest();
    assert_eq!(manifest.name, "evm-logs");
    assert!(EvmLogs::open(&manifest.config_example, None).is_ok());
}
