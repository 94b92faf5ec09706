//! Plugin runtime benchmark: prints figures, asserts nothing.
//!
//! - events/s decoding batched Binance trade frames in the WASM connector (epoch deadline on)
//!   against the same decode code compiled natively, in the same process and run;
//! - component compile time cold vs from the cache; instantiation time; memory per instance.
//!
//! Run: `cargo bench -p anode --bench plugin_throughput` (release build).
//! `ANODE_BENCH_POLYGLOT=rust=a.wasm,python=b.wasm,js=c.wasm` compares the same connector
//! written in several languages instead (see `polyglot`).
//! `ANODE_BENCH_FRAMES` sets the frames per round (default 200000); `ANODE_BENCH_WASM` another
//! build of the Binance connector (with names kept, `ANODE_PLUGIN_PROFILER=perfmap` lets
//! `perf report` name its functions).

use std::path::Path;
use std::time::{Duration, Instant};

use anode::config::PluginLimits;
use anode::plugin::{ConnectorInstance, Frame, Plugin, PluginRuntime, SessionId};
use anode_plugin_sdk::Connector as _;

const BATCH: usize = 256;
const ROUNDS: usize = 5;
const CONFIG: &str = r#"{"base_url":"ws://127.0.0.1:9/binance","symbols":["btcusdt","ethusdt"]}"#;

fn main() {
    let frames_per_round: usize = std::env::var("ANODE_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    if let Ok(list) = std::env::var("ANODE_BENCH_POLYGLOT") {
        polyglot(&list, frames_per_round);
        return;
    }
    // `ANODE_BENCH_WASM` runs another build of the connector (one keeping its function names,
    // for `perf report` with `ANODE_PLUGIN_PROFILER=perfmap`, or one built with other flags).
    let wasm_path = std::env::var_os("ANODE_BENCH_WASM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("ANODE_WASM_DIR")).join("binance_trades.wasm"));
    let bytes = std::fs::read(&wasm_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (binance_trades.wasm is built by build.rs)",
            wasm_path.display()
        )
    });
    let frames = trade_frames(frames_per_round);
    if std::env::var_os("ANODE_BENCH_ONCE").is_some() {
        once(&bytes, &frames);
        return;
    }
    println!(
        "plugin_throughput: {frames_per_round} Binance trade frames per round, batches of {BATCH}, {ROUNDS} rounds (median)"
    );

    // --- compile: cold vs cache ---
    let cache = tempfile::tempdir().expect("temp dir");
    let runtime = PluginRuntime::new(PluginLimits::default(), Some(cache.path().to_owned()))
        .expect("runtime");
    let started = Instant::now();
    let (plugin, _) = runtime.load(&bytes, None).expect("loads");
    let cold = started.elapsed();
    let fresh = PluginRuntime::new(PluginLimits::default(), Some(cache.path().to_owned()))
        .expect("runtime");
    let started = Instant::now();
    let _ = fresh.load(&bytes, None).expect("loads from cache");
    let cached = started.elapsed();
    println!(
        "compile+describe: cold {:.1} ms, from cache {:.2} ms ({:.0}x faster), component {} KiB",
        ms(cold),
        ms(cached),
        cold.as_secs_f64() / cached.as_secs_f64(),
        bytes.len() / 1024
    );

    // --- throughput: native vs wasm, interleaved rounds ---
    let mut instance = runtime.connector(&plugin).expect("connector");
    let mut session = instance.open(CONFIG, None).expect("opens");
    let sdk_frames = as_sdk_frames(&frames);
    // The same plugin with fuel metering on (`plugins.fuel_per_call`), for its cost.
    let metering = PluginRuntime::new(
        PluginLimits {
            fuel_per_call: 10_000_000_000,
            ..PluginLimits::default()
        },
        None,
    )
    .expect("runtime");
    let (metered_plugin, _) = metering.load(&bytes, None).expect("loads");
    let mut metered = metering.connector(&metered_plugin).expect("connector");
    let mut metered_session = metered.open(CONFIG, None).expect("opens");
    let mut native_rates = Vec::new();
    let mut wasm_rates = Vec::new();
    let mut metered_rates = Vec::new();
    for _ in 0..ROUNDS {
        // Every round starts each side from a fresh session, so both do the same work (the
        // trade ids of the frames repeat from round to round).
        let mut native = binance_trades::BinanceTrades::open(CONFIG, None).expect("opens");
        instance.close(session);
        session = instance.open(CONFIG, None).expect("opens");
        metered.close(metered_session);
        metered_session = metered.open(CONFIG, None).expect("opens");
        let started = Instant::now();
        let mut events = 0usize;
        for batch in sdk_frames.chunks(BATCH) {
            // Copy the batch, as the host copies frames into the guest.
            let batch = batch.to_vec();
            events += anode_plugin_sdk::testing::frame_batch(&mut native, &batch)
                .events
                .len();
        }
        native_rates.push(events as f64 / started.elapsed().as_secs_f64());
        assert_eq!(events, frames.len());

        let started = Instant::now();
        let mut events = 0usize;
        for batch in frames.chunks(BATCH) {
            events += instance
                .on_frames(session, batch)
                .expect("decodes")
                .events
                .len();
        }
        wasm_rates.push(events as f64 / started.elapsed().as_secs_f64());
        assert_eq!(events, frames.len());

        let started = Instant::now();
        let mut events = 0usize;
        for batch in frames.chunks(BATCH) {
            events += metered
                .on_frames(metered_session, batch)
                .expect("decodes")
                .events
                .len();
        }
        metered_rates.push(events as f64 / started.elapsed().as_secs_f64());
    }
    let native = median(&mut native_rates);
    let wasm = median(&mut wasm_rates);
    let metered_rate = median(&mut metered_rates);
    println!(
        "decode: native {:.0} events/s, wasm {:.0} events/s, ratio wasm/native {:.2}",
        native,
        wasm,
        wasm / native
    );
    println!(
        "  fuel metering: wasm with it {:.0} events/s; metered/unmetered {:.2}",
        metered_rate,
        metered_rate / wasm
    );
    for batch in [1usize, 16, 64, 1024] {
        let n = (frames.len() / 4).max(batch);
        let started = Instant::now();
        for chunk in frames[..n].chunks(batch) {
            instance.on_frames(session, chunk).expect("decodes");
        }
        println!(
            "  wasm with batches of {batch:>4}: {:.0} events/s",
            n as f64 / started.elapsed().as_secs_f64()
        );
    }

    // Where the time goes: frames that decode to nothing (a method reply) cost only the
    // transfer into the guest and a trivial parse; the same frames natively, for scale.
    let acks: Vec<Frame> = (0..frames.len())
        .map(|i| Frame {
            data: format!(r#"{{"result":null,"id":{i}}}"#).into_bytes(),
            received_at: 0,
        })
        .collect();
    let started = Instant::now();
    for batch in acks.chunks(BATCH) {
        instance.on_frames(session, batch).expect("decodes");
    }
    let wasm_ack = started.elapsed().as_secs_f64() / acks.len() as f64;
    let sdk_acks = as_sdk_frames(&acks);
    let mut native_plugin = binance_trades::BinanceTrades::open(CONFIG, None).expect("opens");
    let started = Instant::now();
    for batch in sdk_acks.chunks(BATCH) {
        let batch = batch.to_vec();
        anode_plugin_sdk::testing::frame_batch(&mut native_plugin, &batch);
    }
    let native_ack = started.elapsed().as_secs_f64() / acks.len() as f64;
    println!(
        "per frame without events: wasm {:.0} ns, native {:.0} ns; per trade: wasm {:.0} ns, native {:.0} ns",
        wasm_ack * 1e9,
        native_ack * 1e9,
        1e9 / wasm,
        1e9 / native
    );

    // --- instantiation and memory per instance ---
    const INSTANCES: usize = 300;
    let (_live, instantiate, per_instance) =
        live_instances(&runtime, &plugin, CONFIG, INSTANCES, &frames[..BATCH]);
    println!(
        "instance: new instance + open session {:.1} µs each; resident memory {:.0} KiB per live instance after one batch ({INSTANCES} instances)",
        instantiate.as_secs_f64() * 1e6,
        per_instance
    );
    let m = plugin.metrics().snapshot();
    println!(
        "plugin metrics: calls {} events {} busy {:.2} s traps {}",
        m.calls,
        m.events_out,
        m.busy_ns as f64 / 1e9,
        m.traps
    );
}

/// `ANODE_BENCH_ONCE=1`: one pass of the frames natively and one through the component, each in
/// a function of its own, for an instruction count that a noisy machine does not move:
/// `valgrind --tool=callgrind` and `callgrind_annotate --inclusive=yes`, then compare
/// `decode_native` with `decode_wasm`.
fn once(bytes: &[u8], frames: &[Frame]) {
    let runtime = PluginRuntime::new(PluginLimits::default(), None).expect("runtime");
    let (plugin, _) = runtime.load(bytes, None).expect("loads");
    let mut instance = runtime.connector(&plugin).expect("connector");
    let sdk_frames = as_sdk_frames(frames);
    // Warm both sides up on another session, so neither pass pays for first use.
    let warm = instance.open(CONFIG, None).expect("opens");
    instance.on_frames(warm, &frames[..BATCH]).expect("decodes");
    instance.close(warm);
    decode_native(&sdk_frames[..BATCH]);
    let native = decode_native(&sdk_frames);
    let session = instance.open(CONFIG, None).expect("opens");
    let wasm = decode_wasm(&mut instance, session, frames);
    assert_eq!((native, wasm), (frames.len(), frames.len()));
    println!(
        "one pass each: {} frames, {native} events native, {wasm} events wasm",
        frames.len()
    );
}

#[inline(never)]
fn decode_native(frames: &[anode_plugin_sdk::Frame]) -> usize {
    let mut native = binance_trades::BinanceTrades::open(CONFIG, None).expect("opens");
    let mut events = 0;
    for batch in frames.chunks(BATCH) {
        // Copy the batch, as the host copies frames into the guest.
        let batch = batch.to_vec();
        events += anode_plugin_sdk::testing::frame_batch(&mut native, &batch)
            .events
            .len();
    }
    events
}

#[inline(never)]
fn decode_wasm(instance: &mut ConnectorInstance, session: SessionId, frames: &[Frame]) -> usize {
    frames
        .chunks(BATCH)
        .map(|batch| {
            instance
                .on_frames(session, batch)
                .expect("decodes")
                .events
                .len()
        })
        .sum()
}

/// `ANODE_BENCH_POLYGLOT=rust=a.wasm,python=b.wasm,js=c.wasm`: the same connector (the
/// `anode plugin new` JSON echo, one event per message, the trade id as upstream id) written
/// in each language, measured in one run: component size, compile, instantiation, memory per
/// instance and decode rate on the same Binance trade frames.
fn polyglot(list: &str, frames_per_round: usize) {
    const CONFIG: &str = r#"{"url":"ws://127.0.0.1:9/feed","id_field":"t"}"#;
    const INSTANCES: usize = 10;
    let frames = trade_frames(frames_per_round.min(50_000));
    println!(
        "polyglot: the echo connector in each language; {} frames, batches of {BATCH}, {ROUNDS} rounds (median)",
        frames.len()
    );
    println!(
        "{:<8} {:>9} {:>11} {:>14} {:>16} {:>12} {:>13}",
        "lang",
        "size KiB",
        "compile ms",
        "instantiate ms",
        "KiB per instance",
        "events/s",
        "µs per event"
    );
    for item in list.split(',') {
        let (lang, path) = item.split_once('=').expect("lang=path");
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // Each runtime's own memory request, within a generous cap.
        let limits = PluginLimits {
            max_memory_limit_mib: 512,
            call_timeout_ms: 5_000,
            ..PluginLimits::default()
        };
        let runtime = PluginRuntime::new(limits, None).expect("runtime");
        let started = Instant::now();
        let (plugin, _) = runtime.load(&bytes, None).expect("loads");
        let compile = started.elapsed();
        let (mut live, instantiate, per_instance) =
            live_instances(&runtime, &plugin, CONFIG, INSTANCES, &frames[..BATCH]);
        let (instance, session) = &mut live[0];
        let mut rates = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let mut events = 0;
            for batch in frames.chunks(BATCH) {
                events += instance
                    .on_frames(*session, batch)
                    .expect("decodes")
                    .events
                    .len();
            }
            assert_eq!(events, frames.len(), "{lang}: one event per frame");
            rates.push(events as f64 / started.elapsed().as_secs_f64());
        }
        let rate = median(&mut rates);
        println!(
            "{lang:<8} {:>9} {:>11.0} {:>14.2} {:>16.0} {:>12.0} {:>13.1}",
            bytes.len() / 1024,
            ms(compile),
            ms(instantiate),
            per_instance,
            rate,
            1e6 / rate
        );
    }
}

/// `n` live instances of `plugin`, each with a session open on `config` that decoded `batch`;
/// the time per instance and session, and the resident KiB each added.
fn live_instances(
    runtime: &PluginRuntime,
    plugin: &Plugin,
    config: &str,
    n: usize,
    batch: &[Frame],
) -> (Vec<(ConnectorInstance, SessionId)>, Duration, f64) {
    let rss_before = rss_kib();
    let started = Instant::now();
    let mut live = Vec::with_capacity(n);
    for _ in 0..n {
        let mut instance = runtime.connector(plugin).expect("connector");
        let session = instance.open(config, None).expect("opens");
        live.push((instance, session));
    }
    let instantiate = started.elapsed() / n as u32;
    for (instance, session) in &mut live {
        instance.on_frames(*session, batch).expect("decodes");
    }
    let per_instance = rss_kib().saturating_sub(rss_before) as f64 / n as f64;
    (live, instantiate, per_instance)
}

fn trade_frames(n: usize) -> Vec<Frame> {
    (0..n)
        .map(|i| {
            // Two symbols taking turns, each with consecutive trade ids, as a venue sends them.
            let symbol = if i % 2 == 0 { "BTCUSDT" } else { "ETHUSDT" };
            let text = format!(
                r#"{{"stream":"{}@trade","data":{{"e":"trade","E":{},"s":"{symbol}","t":{},"p":"{}.{:02}","q":"0.{:04}","T":{},"m":{},"M":true}}}}"#,
                symbol.to_lowercase(),
                1_700_000_000_000u64 + i as u64,
                i / 2 + 1,
                30_000 + i % 500,
                i % 100,
                i % 10_000,
                1_700_000_000_000u64 + i as u64,
                i % 3 == 0
            );
            Frame {
                data: text.into_bytes(),
                received_at: 1_700_000_000_000_000,
            }
        })
        .collect()
}

/// The same frames as the plugin SDK's type, for the native side.
fn as_sdk_frames(frames: &[Frame]) -> Vec<anode_plugin_sdk::Frame> {
    frames
        .iter()
        .map(|f| anode_plugin_sdk::Frame {
            data: f.data.clone(),
            received_at: f.received_at,
        })
        .collect()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4)
        .unwrap_or(0)
}
