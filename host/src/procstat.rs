//! A process's CPU time and resident memory, read from Linux's `/proc`: the node's own for
//! `/metrics`, and for `anode bench` its node's and the local PostgreSQL server's. Elsewhere
//! (no `/proc`) there is nothing to read and the readers say so with `None`.

/// User and system CPU seconds of process `pid` (a number, or `self`).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| cpu_seconds_of(&stat))
}

/// Resident memory of process `pid` (a number, or `self`), in bytes.
pub fn resident_bytes(pid: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// CPU seconds of every process named `postgres` on this machine (a local server's backends,
/// writer, WAL writer, checkpointer; backends that exited in between are not counted).
pub fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| stat.contains("(postgres)"))
        .filter_map(|stat| cpu_seconds_of(&stat))
        .sum()
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds.
fn cpu_seconds_of(stat: &str) -> Option<f64> {
    // Fields after the command (which is in parentheses and may hold spaces); utime and stime
    // are fields 14 and 15 of the line: 12 and 13 after the command.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture it runs on.
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_command_are_read() {
        let stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 130 0 0 20 0 \
                    1 0 100 1000 10";
        assert_eq!(cpu_seconds_of(stat), Some(3.8));
        assert_eq!(cpu_seconds_of("garbage"), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        // Spend a little CPU so the count is above zero at USER_HZ resolution.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(cpu_seconds("self").is_some_and(|s| s > 0.0));
        assert!(resident_bytes("self").is_some_and(|b| b > 1 << 20));
        assert_eq!(cpu_seconds("0"), None);
    }
}
