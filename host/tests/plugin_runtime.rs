//! The plugin runtime end to end: real components built for wasm32-wasip2 (by the host's
//! build script), loaded, sandboxed and called the way the node calls them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anode::config::PluginLimits;
use anode::plugin::{
    CallError, CompileSource, ConnectorInstance, Digest, Frame, Kind, Plan, PluginError,
    PluginLoadError, PluginRuntime, PluginStore, StoreError,
};
use anode_plugin_sdk::Connector as _;

fn wasm(name: &str) -> Vec<u8> {
    let path = Path::new(env!("ANODE_WASM_DIR")).join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn test_limits() -> PluginLimits {
    PluginLimits {
        call_timeout_ms: 200,
        memory_limit_mib: 16,
        epoch_tick_ms: 2,
        restart_backoff_min_ms: 50,
        restart_backoff_max_ms: 400,
        ..PluginLimits::default()
    }
}

fn runtime(cache: Option<PathBuf>) -> PluginRuntime {
    PluginRuntime::new(test_limits(), cache).expect("runtime starts")
}

fn connector(runtime: &PluginRuntime, name: &str) -> ConnectorInstance {
    let (plugin, _) = runtime.load(&wasm(name), None).expect("plugin loads");
    runtime.connector(&plugin).expect("is a connector")
}

fn frames(texts: &[&str]) -> Vec<Frame> {
    texts
        .iter()
        .map(|t| Frame {
            data: t.as_bytes().to_vec(),
            received_at: 1_700_000_000_000_000,
        })
        .collect()
}

const TRADE: &str = r#"{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}"#;

/// Retry `f` until it stops answering `BackingOff`, within a deadline.
fn after_backoff<T>(mut f: impl FnMut() -> Result<T, CallError>) -> Result<T, CallError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Err(CallError::BackingOff { wait, .. }) if Instant::now() < deadline => {
                std::thread::sleep(wait.min(Duration::from_millis(20)));
            }
            other => return other,
        }
    }
}

#[test]
fn binance_connector_in_wasm_matches_native_decoding() {
    let runtime = runtime(None);
    let mut instance = connector(&runtime, "binance-trades");
    let manifest = instance.plugin().manifest().clone();
    assert_eq!(manifest.name, "binance-trades");
    assert_eq!(manifest.kind, Kind::Connector);
    assert_eq!(manifest.digest, Digest::of(&wasm("binance-trades")));
    assert!(manifest.config_schema["properties"]["symbols"].is_object());

    let config = r#"{"base_url":"ws://127.0.0.1:9/binance","symbols":["bnbbtc","ethusdt"]}"#;
    let session = instance.open(config, None).expect("opens");
    match instance.plan(session).expect("plans") {
        Plan::Websocket(ws) => assert_eq!(
            ws.url,
            "ws://127.0.0.1:9/binance/stream?streams=bnbbtc@trade/ethusdt@trade"
        ),
        other => panic!("expected a WebSocket plan, got {other:?}"),
    }

    let wrapped = format!(r#"{{"stream":"bnbbtc@trade","data":{TRADE}}}"#);
    let batch = frames(&[TRADE, "{not json", &wrapped, r#"{"result":null,"id":1}"#]);
    let decoded = instance.on_frames(session, &batch).expect("decodes");
    assert_eq!(decoded.events.len(), 2);
    assert_eq!(decoded.errors.len(), 1);
    assert!(matches!(decoded.errors[0], PluginError::BadInput(_)));

    // The same code, compiled natively, gives byte-identical events.
    let mut native = binance_trades::BinanceTrades::open(config, None).expect("opens natively");
    let native_frames: Vec<anode_plugin_sdk::Frame> = batch
        .iter()
        .map(|f| anode_plugin_sdk::Frame {
            data: f.data.clone(),
            received_at: f.received_at,
        })
        .collect();
    let expected = anode_plugin_sdk::testing::frame_batch(&mut native, &native_frames);
    assert_eq!(expected.events.len(), decoded.events.len());
    for (wasm_event, native_event) in decoded.events.iter().zip(&expected.events) {
        assert_eq!(wasm_event.payload, native_event.payload);
        assert_eq!(wasm_event.upstream_id, native_event.upstream_id);
        assert_eq!(wasm_event.key, native_event.key);
        assert_eq!(wasm_event.event_time, native_event.event_time);
    }

    let m = instance.plugin().metrics().snapshot();
    assert_eq!(m.events_out, 2);
    assert_eq!(m.errors, 1);
    assert_eq!(m.items_in, 4);
    assert_eq!(m.traps, 0);
}

#[test]
fn bad_config_is_an_error_value_not_a_crash() {
    let runtime = runtime(None);
    let mut instance = connector(&runtime, "binance-trades");
    match instance.open(r#"{"symbols":[]}"#, None) {
        Err(CallError::Plugin {
            error: PluginError::Fatal(message),
            ..
        }) => assert!(message.contains("symbols"), "{message}"),
        other => panic!("expected a fatal plugin error, got {:?}", other.map(|_| ())),
    }
    assert_eq!(instance.plugin().metrics().snapshot().traps, 0);
    // The instance is still good.
    assert!(instance.open(r#"{"symbols":["btcusdt"]}"#, None).is_ok());
}

#[test]
fn an_infinite_loop_is_interrupted_and_other_plugins_keep_working() {
    let runtime = runtime(None);
    let mut hostile = connector(&runtime, "hostile-plugin");
    let mut healthy = connector(&runtime, "binance-trades");
    let healthy_session = healthy.open(r#"{"symbols":["bnbbtc"]}"#, None).unwrap();
    let looping = hostile.open(r#"{"mode":"loop"}"#, None).unwrap();
    let fine = hostile.open(r#"{"mode":"ok"}"#, None).unwrap();

    let started = Instant::now();
    let error = hostile.on_frames(looping, &frames(&["x"])).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, CallError::Timeout { .. }), "{error}");
    assert!(took < Duration::from_secs(5), "interrupted after {took:?}");
    assert!(error.to_string().contains("deadline"), "{error}");

    // Another plugin is unaffected.
    let decoded = healthy
        .on_frames(healthy_session, &frames(&[TRADE]))
        .unwrap();
    assert_eq!(decoded.events.len(), 1);

    // The crashed instance backs off, then comes back with its sessions re-opened.
    assert!(matches!(
        hostile.on_frames(fine, &frames(&["x"])),
        Err(CallError::BackingOff { .. })
    ));
    let decoded = after_backoff(|| hostile.on_frames(fine, &frames(&["a", "b"]))).unwrap();
    assert_eq!(decoded.events.len(), 2);
    let m = hostile.plugin().metrics().snapshot();
    assert_eq!(m.timeouts, 1);
    assert!(m.instantiations >= 2, "{m:?}");
}

#[test]
fn a_plugin_that_waits_in_a_wasi_call_is_stopped_at_once() {
    let runtime = runtime(None);
    let mut hostile = connector(&runtime, "hostile-plugin");
    let mut healthy = connector(&runtime, "binance-trades");
    let healthy_session = healthy.open(r#"{"symbols":["bnbbtc"]}"#, None).unwrap();
    let sleeping = hostile.open(r#"{"mode":"sleep"}"#, None).unwrap();
    let started = Instant::now();
    let error = hostile.on_frames(sleeping, &frames(&["x"])).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, CallError::Trap { .. }), "{error}");
    assert!(error.to_string().contains("may not block"), "{error}");
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
    let decoded = healthy
        .on_frames(healthy_session, &frames(&[TRADE]))
        .unwrap();
    assert_eq!(decoded.events.len(), 1, "another plugin is unaffected");
}

#[test]
fn fuel_bounds_a_call_even_when_the_clock_would_not() {
    let runtime = PluginRuntime::new(
        PluginLimits {
            call_timeout_ms: 600_000,
            fuel_per_call: 50_000_000,
            ..test_limits()
        },
        None,
    )
    .unwrap();
    let mut hostile = connector(&runtime, "hostile-plugin");
    let looping = hostile.open(r#"{"mode":"loop"}"#, None).unwrap();
    let started = Instant::now();
    let error = hostile.on_frames(looping, &frames(&["x"])).unwrap_err();
    assert!(matches!(error, CallError::OutOfFuel { .. }), "{error}");
    assert!(error.to_string().contains("fuel_per_call"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // Ordinary work fits the same budget.
    let mut healthy = connector(&runtime, "binance-trades");
    let session = healthy.open(r#"{"symbols":["bnbbtc"]}"#, None).unwrap();
    let trades: Vec<&str> = std::iter::repeat_n(TRADE, 500).collect();
    assert_eq!(
        healthy
            .on_frames(session, &frames(&trades))
            .unwrap()
            .events
            .len(),
        500
    );
}

#[test]
fn a_memory_bomb_traps_at_the_cap() {
    let runtime = runtime(None);
    let mut hostile = connector(&runtime, "hostile-plugin");
    let bomb = hostile.open(r#"{"mode":"bomb"}"#, None).unwrap();
    let error = hostile.on_frames(bomb, &frames(&["x"])).unwrap_err();
    assert!(
        matches!(error, CallError::OutOfMemory { limit_mib: 16, .. }),
        "{error}"
    );
    assert_eq!(hostile.plugin().metrics().snapshot().out_of_memory, 1);
    // Re-created after the backoff; the bomb session still bombs, predictably.
    let again = after_backoff(|| hostile.on_frames(bomb, &frames(&["x"])));
    assert!(matches!(again, Err(CallError::OutOfMemory { .. })));
}

#[test]
fn a_panic_becomes_an_error_with_the_message() {
    let runtime = runtime(None);
    let mut hostile = connector(&runtime, "hostile-plugin");
    let panicking = hostile.open(r#"{"mode":"panic"}"#, None).unwrap();
    let fine = hostile.open(r#"{"mode":"ok"}"#, None).unwrap();
    match hostile.on_frames(panicking, &frames(&["x"])) {
        Err(CallError::Trap { stderr, .. }) => {
            assert!(stderr.contains("panicked on purpose"), "stderr: {stderr}")
        }
        other => panic!("expected a trap, got {:?}", other.map(|_| ())),
    }
    assert_eq!(hostile.plugin().metrics().snapshot().traps, 1);
    let decoded = after_backoff(|| hostile.on_frames(fine, &frames(&["a"]))).unwrap();
    assert_eq!(decoded.events.len(), 1);
}

#[test]
fn wrong_digest_is_rejected_before_compiling() {
    let data = tempfile::tempdir().unwrap();
    let cache = PluginStore::cache_dir(data.path());
    let runtime = runtime(Some(cache.clone()));
    let store = PluginStore::open(data.path()).unwrap();
    let bytes = wasm("binance-trades");
    let wrong = Digest::of(b"something else");
    let error = store
        .install(&runtime, &bytes, Some(&wrong), None, "binance.wasm")
        .unwrap_err();
    match &error {
        StoreError::Load {
            source: PluginLoadError::DigestMismatch { expected, actual },
            ..
        } => {
            assert_eq!(expected, &wrong.to_hex());
            assert_eq!(actual, &Digest::of(&bytes).to_hex());
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(error.to_string().contains("binance.wasm"), "{error}");
    assert!(store.list().unwrap().is_empty());
    let compiled = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        compiled, 0,
        "nothing may be compiled for a mismatched digest"
    );
}

#[test]
fn a_plugin_built_against_wit_0_1_0_still_loads_and_runs() {
    let runtime = runtime(None);
    let (plugin, _) = runtime
        .load(&wasm("legacy-connector-plugin"), None)
        .expect("a 0.1.0 component loads");
    let manifest = plugin.manifest();
    assert_eq!(manifest.wit, "anode:plugin@0.1.0");
    assert_eq!(
        (manifest.name.as_str(), manifest.kind),
        ("legacy-ticks", Kind::Connector)
    );
    let mut instance = runtime.connector(&plugin).unwrap();
    let session = instance
        .open(r#"{"url":"ws://127.0.0.1:1/ticks"}"#, Some("6"))
        .unwrap();
    assert!(
        instance.backfill(session).unwrap().is_empty(),
        "0.1.0 has no backfill: nothing is asked for at start"
    );
    match instance.plan(session).unwrap() {
        Plan::Websocket(ws) => assert_eq!(ws.url, "ws://127.0.0.1:1/ticks"),
        other => panic!("expected a WebSocket plan, got {other:?}"),
    }
    let decoded = instance
        .on_frames(session, &frames(&["7", "8", "x"]))
        .unwrap();
    let ids: Vec<_> = decoded
        .events
        .iter()
        .map(|e| e.upstream_id.clone().unwrap())
        .collect();
    assert_eq!(ids, ["7", "8"]);
    assert_eq!(decoded.events[1].payload, br#"{"n":8}"#);
    assert_eq!(decoded.errors.len(), 1, "the bad frame is reported");
    assert_eq!(decoded.cursor.as_deref(), Some("8"));
    assert_eq!(instance.cursor(session), Some("8"));
    let refused = instance.open("{}", None).unwrap_err();
    assert!(refused.to_string().contains("ws://"), "{refused}");

    // A current plugin asks for its backfill at start through the same call.
    let mut binance = connector(&runtime, "binance-trades");
    let session = binance
        .open(
            r#"{"base_url":"ws://127.0.0.1:1/binance","symbols":["btcusdt"]}"#,
            Some(r#"{"BTCUSDT":41}"#),
        )
        .unwrap();
    assert_eq!(binance.plugin().manifest().wit, "anode:plugin@0.2.0");
    let asked = binance.backfill(session).unwrap();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0].url,
        "http://127.0.0.1:1/binance/api/v3/historicalTrades?symbol=BTCUSDT&fromId=42&limit=1000"
    );
}

#[test]
fn non_components_and_other_worlds_get_clear_errors() {
    let runtime = runtime(None);
    let load = |bytes: &[u8]| runtime.load(bytes, None).map(|_| ()).unwrap_err();
    assert!(matches!(load(b"hello"), PluginLoadError::NotWasm));
    // An empty core module: valid WebAssembly, but not a component.
    let core = load(b"\0asm\x01\0\0\0");
    assert!(matches!(core, PluginLoadError::CoreModule));
    assert!(core.to_string().contains("wasm32-wasip2"), "{core}");
    let other = load(&wasm("other-world-plugin"));
    match &other {
        PluginLoadError::WrongWorld { exports } => assert!(exports.contains("add"), "{exports}"),
        e => panic!("expected WrongWorld, got {e}"),
    }
    assert!(other.to_string().contains("anode:plugin/source@0.2.0"));
    // A component header with garbage after it.
    let mut broken = wasm("binance-trades");
    broken.truncate(broken.len() / 2);
    assert!(matches!(load(&broken), PluginLoadError::Compile(_)));
}

#[test]
fn compiled_components_are_cached_by_digest() {
    let data = tempfile::tempdir().unwrap();
    let cache = PluginStore::cache_dir(data.path());
    let bytes = wasm("binance-trades");
    let first = runtime(Some(cache.clone()));
    let (_, source) = first.load(&bytes, None).unwrap();
    assert_eq!(source, CompileSource::Compiled);
    let cached = first.cache_path(&Digest::of(&bytes)).unwrap();
    assert!(cached.exists());
    drop(first);

    // A new runtime (a restarted node) loads the compiled form.
    let second = runtime(Some(cache.clone()));
    let (plugin, source) = second.load(&bytes, None).unwrap();
    assert_eq!(source, CompileSource::Cache);
    let mut instance = second.connector(&plugin).unwrap();
    let session = instance.open(r#"{"symbols":["bnbbtc"]}"#, None).unwrap();
    assert_eq!(
        instance
            .on_frames(session, &frames(&[TRADE]))
            .unwrap()
            .events
            .len(),
        1
    );

    // A damaged cache file is ignored and replaced.
    std::fs::write(&cached, b"garbage").unwrap();
    let (_, source) = second.load(&bytes, None).unwrap();
    assert_eq!(source, CompileSource::Compiled);
}

#[test]
fn store_installs_lists_finds_and_removes() {
    let data = tempfile::tempdir().unwrap();
    let runtime = runtime(Some(PluginStore::cache_dir(data.path())));
    let store = PluginStore::open(data.path()).unwrap();
    let installed = store.install_bundled(&runtime).unwrap();
    assert!(
        installed
            .iter()
            .any(|i| i.manifest.name == "binance-trades")
    );
    assert!(
        store.install_bundled(&runtime).unwrap().is_empty(),
        "second run installs nothing"
    );

    let (again, _) = store
        .install(&runtime, &wasm("binance-trades"), None, None, "again")
        .unwrap();
    assert!(again.already_present);
    let (hostile, _) = store
        .install(&runtime, &wasm("hostile-plugin"), None, None, "hostile")
        .unwrap();
    let names: Vec<String> = store.list().unwrap().into_iter().map(|m| m.name).collect();
    assert!(names.contains(&"hostile".to_owned()) && names.contains(&"binance-trades".to_owned()));

    let digest = hostile.manifest.digest;
    assert_eq!(store.find("hostile").unwrap().digest, digest);
    assert_eq!(store.find(&digest.to_hex()[..8]).unwrap().digest, digest);
    assert!(matches!(store.find("nope"), Err(StoreError::NotFound(_))));
    assert_eq!(store.bytes(&digest).unwrap(), wasm("hostile-plugin"));
    let plugin = store.load(&runtime, &digest).unwrap();
    assert_eq!(plugin.manifest().name, "hostile");

    store.remove(Some(&runtime), "hostile").unwrap();
    assert!(matches!(
        store.find("hostile"),
        Err(StoreError::NotFound(_))
    ));
    assert!(runtime.cache_path(&digest).is_some_and(|p| !p.exists()));
}

/// A transform built with the SDK exports `checkpoint`: a step's state taken from one
/// instance and given to another carries the open window on, and the candle closes there as
/// one instance would have made it.
#[test]
fn a_stateful_transform_hands_its_state_to_another_instance() {
    let runtime = runtime(None);
    let (plugin, _) = runtime.load(&wasm("candles"), None).expect("candles loads");
    assert!(plugin.stateful(), "an SDK transform exports checkpoint");
    const T0: i64 = 1_700_000_040_000; // ms, on a second
    let trade = |n: u64, price: &str, at_ms: i64| anode::plugin::Event {
        stream: "trades".into(),
        key: Some("BTC.USDT".into()),
        upstream_id: Some(n.to_string()),
        event_time: Some(at_ms * 1000),
        payload: serde_json::json!({"exchange": "binance", "symbol": "BTC.USDT",
            "price": price, "size": "1", "event_timestamp": at_ms})
        .to_string()
        .into_bytes(),
    };
    let config = r#"{"interval_ms": 1000}"#;
    let mut one = runtime.transform(&plugin).expect("a transform");
    let first = one.configure(config).unwrap();
    assert_eq!(
        one.snapshot(first).unwrap(),
        None,
        "no state before a trade"
    );
    one.process(
        first,
        &[trade(1, "100", T0 + 100), trade(2, "105", T0 + 200)],
    )
    .unwrap();
    let state = one.snapshot(first).unwrap().expect("an open window");

    let mut two = runtime.transform(&plugin).expect("a transform");
    let second = two.configure(config).unwrap();
    two.restore(second, state).unwrap();
    let out = two
        .process(
            second,
            &[trade(3, "99", T0 + 300), trade(4, "101", T0 + 1_100)],
        )
        .unwrap();
    assert_eq!(out.len(), 1, "the window closes on the next window's trade");
    let candle: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(
        (
            &candle["trades"],
            &candle["o"],
            &candle["h"],
            &candle["l"],
            &candle["c"],
            &candle["v"]
        ),
        (
            &serde_json::json!(3),
            &serde_json::json!("100"),
            &serde_json::json!("105"),
            &serde_json::json!("99"),
            &serde_json::json!("99"),
            &serde_json::json!("3")
        )
    );
    // A state the step cannot read is refused with its reason, and the step goes on empty.
    let refused = two.restore(second, b"not a state".to_vec()).unwrap_err();
    assert!(
        refused.to_string().contains("unreadable state"),
        "{refused}"
    );
}
