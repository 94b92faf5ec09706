#!/usr/bin/env bash
# shellcheck disable=SC2015  # `a && b || die` is meant: die unless both hold
# Installs an aNode node on Debian or Ubuntu: the binary, its data dir with the first-party
# plugins, a config file and a systemd service. Safe to run again: what is already in place is
# left alone, and the config file is never overwritten.
#
# Usage: deploy/install.sh [options]
#
#   --prefix DIR        install root (default /usr/local). The binary goes to DIR/bin/anode.
#                       With /usr/local or /usr: config /etc/anode/anode.toml, data /var/lib/anode,
#                       unit DIR/lib/systemd/system/anode.service. Any other DIR is
#                       self-contained: DIR/etc/anode/anode.toml, DIR/var/lib/anode and
#                       DIR/lib/systemd/system/anode.service (also copied to
#                       /etc/systemd/system when the service is enabled).
#   --data-dir DIR      data dir instead of the one above
#   --binary PATH       install this anode binary instead of building one
#   --bind ADDR         API, dashboard and /ws listen address (default 127.0.0.1:7400); beyond
#                       loopback two tokens are needed: --api-token and --api-read-token,
#                       else they are generated
#   --api-token TOKEN   bearer token for changes through the API
#   --api-read-token TOKEN  bearer token for reads (API, /ws, dashboard data, /metrics)
#   --postgres URL      store records in PostgreSQL (default: the embedded store in the data dir)
#   --join HOST:PORT    a seed node's gossip address (port 7946); repeat for more seeds
#   --cluster-key KEY   the cluster's shared secret (16 characters or more), the same on every
#                       node; needed to cluster
#   --advertise HOST    the address other nodes reach this one at (default: this host's first
#                       address from `hostname -I`)
#                       With --join or --cluster-key the node is written as a cluster member:
#                       gossip on 0.0.0.0:7946/udp, API on 0.0.0.0:7400 unless --bind says
#                       otherwise, both advertised at HOST.
#   --no-systemd        write the unit file but do not enable it (automatic when not root or
#                       without systemd); no system user is created then
#   --dry-run           print every step, change nothing
#   -h, --help          this help
#
# The options that shape the config file are only used when it is written, i.e. when it does
# not exist yet; afterwards edit it by hand and `systemctl restart anode`.
set -euo pipefail

SRC_DIR="$(cd "$(dirname "$0")/.." && pwd)"
UNIT_TEMPLATE="$SRC_DIR/deploy/anode.service"
SERVICE_USER=anode

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '3,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

# ── arguments ─────────────────────────────────────────────────────────────────────────────
prefix=/usr/local
data_dir=
binary=
bind=
api_token=
read_token=
postgres=
cluster_key=
advertise=
joins=()
use_systemd=1
dry_run=0
binary_changed=0

need_value() { [ "$#" -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (try --help)"; }
while [ "$#" -gt 0 ]; do
    case "$1" in
        --prefix) need_value "$@"; prefix="$2"; shift 2 ;;
        --data-dir) need_value "$@"; data_dir="$2"; shift 2 ;;
        --binary) need_value "$@"; binary="$2"; shift 2 ;;
        --bind) need_value "$@"; bind="$2"; shift 2 ;;
        --api-token) need_value "$@"; api_token="$2"; shift 2 ;;
        --api-read-token) need_value "$@"; read_token="$2"; shift 2 ;;
        --postgres) need_value "$@"; postgres="$2"; shift 2 ;;
        --join) need_value "$@"; joins+=("$2"); shift 2 ;;
        --cluster-key) need_value "$@"; cluster_key="$2"; shift 2 ;;
        --advertise) need_value "$@"; advertise="$2"; shift 2 ;;
        --no-systemd) use_systemd=0; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option \`$1\` (try --help)" ;;
    esac
done

case "$prefix" in
    /*) ;;
    *) prefix="$(pwd)/$prefix" ;;
esac
prefix="${prefix%/}"
[ -n "$prefix" ] || prefix=/
case "$prefix" in
    /usr/local|/usr) etc_dir=/etc/anode; default_data=/var/lib/anode ;;
    *) etc_dir="$prefix/etc/anode"; default_data="$prefix/var/lib/anode" ;;
esac
bin_dir="$prefix/bin"
data_dir="${data_dir:-$default_data}"
case "$data_dir" in /*) ;; *) data_dir="$(pwd)/$data_dir" ;; esac
config="$etc_dir/anode.toml"
unit_file="$prefix/lib/systemd/system/anode.service"

for seed in "${joins[@]+"${joins[@]}"}"; do
    [[ "$seed" =~ ^[^:[:space:]]+:[0-9]+$ || "$seed" =~ ^\[[0-9a-fA-F:]+\]:[0-9]+$ ]] \
        || die "--join $seed: expected HOST:PORT, for example 10.0.0.5:7946"
done
for path in "$prefix" "$data_dir"; do
    [[ "$path" =~ ^[A-Za-z0-9/._+@-]+$ ]] \
        || die "\`$path\`: use a path of letters, digits and / . _ + @ - only (it goes into a systemd unit)"
done
clustered=0
if [ "${#joins[@]}" -gt 0 ] || [ -n "$cluster_key" ]; then
    clustered=1
    [ -n "$cluster_key" ] \
        || die "--join needs --cluster-key: gossip beyond loopback must be authenticated; use the same secret on every node (make one with: od -An -tx1 -N24 /dev/urandom | tr -d ' \\n')"
    [ "${#cluster_key}" -ge 16 ] \
        || die "--cluster-key must be 16 characters or more (make one with: od -An -tx1 -N24 /dev/urandom | tr -d ' \\n')"
fi
if [ -n "$advertise" ]; then
    [[ "$advertise" =~ ^[A-Za-z0-9.-]+$ || "$advertise" =~ ^\[[0-9a-fA-F:]+\]$ ]] \
        || die "--advertise $advertise: expected a host name or IP address without port"
fi
if [ -n "$bind" ]; then
    [[ "$bind" =~ ^([0-9.]+|\[[0-9a-fA-F:]+\]):[0-9]+$ ]] \
        || die "--bind $bind: expected IP:PORT, for example 0.0.0.0:7400"
fi

# ── helpers ───────────────────────────────────────────────────────────────────────────────
changes=0
is_root() { [ "$(id -u)" = 0 ]; }

# Runs a command that changes the system; with --dry-run only prints it.
act() {
    if [ "$dry_run" = 1 ]; then
        note "[dry-run] would run: $*"
    else
        "$@"
    fi
}

# A TOML basic string.
toml_str() {
    local s="$1"
    s="${s//\\/\\\\}"
    s="${s//\"/\\\"}"
    printf '"%s"' "$s"
}

# anode with none of the installer's ANODE_* variables: the service will not have them.
anode_clean() {
    local unset_args=() var
    while IFS= read -r var; do
        unset_args+=(-u "$var")
    done < <(env | sed -n 's/^\(ANODE_[A-Za-z0-9_]*\)=.*/\1/p')
    env "${unset_args[@]+"${unset_args[@]}"}" "$bin_dir/anode" "$@"
}

# Writes $2 (text) to $1 with mode $3 unless the file already holds exactly that.
write_if_different() {
    local file="$1" text="$2" mode="$3" what="$4"
    if [ -f "$file" ] && [ "$(cat "$file"; printf x)" = "${text}x" ]; then
        note "$what $file is up to date"
        return 0
    fi
    changes=$((changes + 1))
    if [ "$dry_run" = 1 ]; then
        note "[dry-run] would write $what $file"
        return 0
    fi
    install -d -m 0755 "$(dirname "$file")" \
        || die "cannot create $(dirname "$file"): run as root or choose another --prefix"
    local tmp
    tmp="$(mktemp "$file.XXXXXX")" || die "cannot write into $(dirname "$file")"
    printf '%s' "$text" > "$tmp" && chmod "$mode" "$tmp" && mv -f "$tmp" "$file" \
        || { rm -f "$tmp"; die "cannot write $file"; }
    note "wrote $what $file"
}

[ "$dry_run" = 1 ] && say "dry run: printing the steps, changing nothing"

# ── 1. system and tools ───────────────────────────────────────────────────────────────────
say "checking the system"
os="unknown"
if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    os="$(. /etc/os-release; printf '%s' "${ID:-unknown}${ID_LIKE:+ $ID_LIKE}")"
fi
case " $os " in
    *" debian "*|*" ubuntu "*) note "OS: $os" ;;
    *) warn "this installer is made for Debian and Ubuntu; this is \`$os\`: continuing, but packages and paths may differ" ;;
esac
for tool in install sed mktemp id env; do
    command -v "$tool" >/dev/null || die "\`$tool\` is missing: install coreutils/sed (apt-get install coreutils sed) and run again"
done
[ -f "$UNIT_TEMPLATE" ] || die "$UNIT_TEMPLATE is missing: run install.sh from an aNode checkout (deploy/install.sh)"

if [ "$use_systemd" = 1 ]; then
    if ! is_root; then
        use_systemd=0
        note "not root: the systemd unit is written but not enabled (run as root to enable it)"
    elif ! command -v systemctl >/dev/null || [ ! -d /run/systemd/system ]; then
        use_systemd=0
        note "systemd is not running here: the unit is written but not enabled"
    fi
fi

# ── 2. the binary ─────────────────────────────────────────────────────────────────────────
if [ -n "$binary" ]; then
    say "using the binary $binary"
    [ -f "$binary" ] && [ -x "$binary" ] || die "--binary $binary is not an executable file"
    "$binary" --version >/dev/null 2>&1 \
        || die "--binary $binary does not run (\`$binary --version\` failed): is it an anode binary for this machine?"
else
    say "building anode (release) with scripts/build-release.sh"
    [ -x "$SRC_DIR/scripts/build-release.sh" ] && [ -f "$SRC_DIR/Cargo.toml" ] \
        || die "no --binary given and $SRC_DIR is not an aNode checkout: pass --binary PATH or run from a checkout"
    if [ "$dry_run" = 1 ]; then
        while IFS= read -r line; do note "[dry-run] would run: $line"; done \
            < <("$SRC_DIR/scripts/build-release.sh" --dry-run)
        binary="$SRC_DIR/target/release/anode"
    else
        command -v cargo >/dev/null \
            || die "cargo is not installed (or not in root's PATH): install Rust 1.95+ from https://rustup.rs, or build as your user with scripts/build-release.sh and pass --binary target/release/anode"
        command -v cc >/dev/null \
            || die "no C compiler (cc): the build needs one; apt-get install build-essential, then run again"
        binary="$("$SRC_DIR/scripts/build-release.sh" | tail -n 1)" \
            || die "the build failed (see above); fix it, or pass --binary PATH to install a binary built elsewhere"
    fi
fi

say "installing the binary to $bin_dir/anode"
if [ -f "$bin_dir/anode" ] && [ -f "$binary" ] && cmp -s "$binary" "$bin_dir/anode"; then
    note "$bin_dir/anode is up to date"
else
    changes=$((changes + 1))
    binary_changed=1
    act install -D -m 0755 "$binary" "$bin_dir/anode" \
        || die "cannot install $bin_dir/anode: run as root (sudo) or choose a --prefix you can write"
fi
[ "$dry_run" = 1 ] || note "$("$bin_dir/anode" --version)"

# ── 3. service user, data dir ─────────────────────────────────────────────────────────────
owner=
if [ "$use_systemd" = 1 ]; then
    say "system user $SERVICE_USER"
    if id "$SERVICE_USER" >/dev/null 2>&1; then
        note "user $SERVICE_USER exists"
    else
        changes=$((changes + 1))
        act useradd --system --user-group --home-dir "$data_dir" --no-create-home \
            --shell /usr/sbin/nologin "$SERVICE_USER" \
            || die "cannot create the user $SERVICE_USER (useradd failed): create it by hand and run again"
    fi
    owner="$SERVICE_USER:$SERVICE_USER"
fi

say "data dir $data_dir"
if [ -d "$data_dir" ]; then
    note "$data_dir exists"
else
    changes=$((changes + 1))
    act install -d -m 0750 "$data_dir" \
        || die "cannot create $data_dir: run as root or pass --data-dir DIR you can write"
fi

# ── 4. config file (written once, never overwritten) ──────────────────────────────────────
say "config file $config"
if [ -f "$config" ]; then
    note "$config exists and is kept as it is (the installer never overwrites it)"
    if [ -n "$bind$api_token$read_token$postgres$cluster_key$advertise" ] || [ "${#joins[@]}" -gt 0 ]; then
        warn "--bind/--api-token/--api-read-token/--postgres/--join/--cluster-key/--advertise only shape a new config file: edit $config to change them"
    fi
else
    if [ "$clustered" = 1 ]; then
        effective_bind="${bind:-0.0.0.0:7400}"
        if [ -z "$advertise" ]; then
            advertise="$(hostname -I 2>/dev/null | awk '{print $1}')"
            [ -n "$advertise" ] \
                || die "cannot find this host's address for the cluster (hostname -I): pass --advertise HOST"
            note "advertising this node at $advertise (override with --advertise HOST)"
        fi
        case "$advertise" in *:*:*) [[ "$advertise" == \[* ]] || advertise="[$advertise]" ;; esac
    else
        effective_bind="${bind:-127.0.0.1:7400}"
    fi
    token_comment=
    if [ -z "$api_token" ] && [[ ! "$effective_bind" =~ ^(127\.|\[::1\]:) ]]; then
        api_token="$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')" \
            || die "cannot read /dev/urandom to make an API token: pass --api-token"
        token_comment="  # generated by install.sh"
        note "the API listens on $effective_bind: generated an API token (it is in $config)"
    fi
    read_token_comment=
    if [ -z "$read_token" ] && [[ ! "$effective_bind" =~ ^(127\.|\[::1\]:) ]]; then
        read_token="$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')" \
            || die "cannot read /dev/urandom to make a read token: pass --api-read-token"
        read_token_comment="  # generated by install.sh"
        note "the API listens on $effective_bind: generated a read token (it is in $config)"
    fi
    text="# aNode node configuration, written by deploy/install.sh.
# The installer never overwrites this file: edit it, then restart the node.
# Environment variables ANODE_<SECTION>__<KEY> override it (README, \"Configuration\").
data_dir = $(toml_str "$data_dir")

[api]
bind = $(toml_str "$effective_bind")        # API, dashboard, /ws, /metrics
"
    if [ "$clustered" = 1 ]; then
        text+="advertise = $(toml_str "$advertise:${effective_bind##*:}")   # the API as other nodes reach it
"
    fi
    if [ -n "$api_token" ]; then
        text+="token = $(toml_str "$api_token")${token_comment}
"
    else
        text+="# token = \"…\"                  # needed for changes through the API; mandatory beyond loopback
"
    fi
    if [ -n "$read_token" ]; then
        text+="read_token = $(toml_str "$read_token")${read_token_comment}
"
    else
        text+="# read_token = \"…\"             # needed for reads (API, /ws, /metrics); mandatory beyond loopback
"
    fi
    text+="
[store]
"
    if [ -n "$postgres" ]; then
        text+="postgres_url = $(toml_str "$postgres")
"
    else
        text+="# postgres_url = \"postgres://anode@127.0.0.1:5432/anode\"   # else the embedded store in data_dir
"
    fi
    if [ "$clustered" = 1 ]; then
        seeds=
        for seed in "${joins[@]+"${joins[@]}"}"; do
            seeds+="${seeds:+, }$(toml_str "$seed")"
        done
        text+="
[cluster]
bind = \"0.0.0.0:7946\"                 # gossip (UDP): open 7946/udp between the nodes
advertise = $(toml_str "$advertise:7946")
seeds = [$seeds]
key = $(toml_str "$cluster_key")
"
    else
        text+="
# [cluster]                      # to cluster with other nodes (README, \"Deployment\")
# bind = \"0.0.0.0:7946\"
# advertise = \"this-host:7946\"
# seeds = [\"10.0.0.5:7946\"]
# key = \"the same secret on every node\"
"
    fi
    text+="
# Sources to run: [[source]] tables (README, \"Running a node\"), or add them at run time
# with \`anode source add\`.
"
    write_if_different "$config" "$text" 0640 "config file"
fi
if [ -n "$owner" ] && [ "$dry_run" = 0 ]; then
    chown "root:$SERVICE_USER" "$config" && chmod 0640 "$config" \
        || die "cannot give $config to root:$SERVICE_USER"
    chown -R "$owner" "$data_dir" || die "cannot give $data_dir to $owner"
fi

# ── 5. first-party plugins ────────────────────────────────────────────────────────────────
say "installing the first-party plugins into $data_dir"
if [ "$dry_run" = 1 ]; then
    note "[dry-run] would run: $bin_dir/anode --config $config --data-dir $data_dir plugin install --builtin"
else
    out="$(anode_clean --config "$config" --data-dir "$data_dir" plugin install --builtin 2>&1)" \
        || die "\`anode plugin install --builtin\` failed: $out
  (if it names the config file, fix $config and run install.sh again)"
    summary="$(printf '%s\n' "$out" | grep 'built-in plugin' | tail -n 1)"
    note "${summary:-$out}"
    case "$summary" in
        "0 built-in"*) ;;
        *) changes=$((changes + 1)) ;;
    esac
    if [ -n "$owner" ]; then
        chown -R "$owner" "$data_dir" || die "cannot give $data_dir to $owner"
    fi
fi

# ── 6. systemd unit ───────────────────────────────────────────────────────────────────────
say "systemd unit $unit_file"
group="$SERVICE_USER"
unit="$(sed -e "s|@BINDIR@|$bin_dir|g" -e "s|@CONFIG@|$config|g" -e "s|@DATA_DIR@|$data_dir|g" \
    -e "s|@USER@|$SERVICE_USER|g" -e "s|@GROUP@|$group|g" "$UNIT_TEMPLATE")
"
unit_changes_before=$changes
write_if_different "$unit_file" "$unit" 0644 "unit file"
case "$prefix" in
    /usr/local|/usr) ;;
    *)
        if [ "$use_systemd" = 1 ]; then
            write_if_different /etc/systemd/system/anode.service "$unit" 0644 "unit file"
        fi
        ;;
esac
unit_changed=$((changes - unit_changes_before))

if [ "$use_systemd" = 1 ]; then
    say "enabling and starting anode.service"
    if [ "$unit_changed" -gt 0 ]; then
        act systemctl daemon-reload || die "systemctl daemon-reload failed: see journalctl -xe"
    fi
    if [ "$dry_run" = 0 ] && systemctl is-enabled --quiet anode.service 2>/dev/null \
        && systemctl is-active --quiet anode.service; then
        if [ "$binary_changed" = 1 ] || [ "$unit_changed" -gt 0 ]; then
            act systemctl restart anode.service \
                || die "anode.service did not restart: see journalctl -u anode"
            note "restarted anode.service (new binary or unit)"
        else
            note "anode.service is enabled and running"
        fi
    else
        changes=$((changes + 1))
        act systemctl enable --now anode.service \
            || die "anode.service did not start: see systemctl status anode and journalctl -u anode"
    fi
else
    note "not enabled; to run it as a service (as root): install -m 0644 $unit_file /etc/systemd/system/ && systemctl daemon-reload && systemctl enable --now anode"
    note "or run the node by hand: $bin_dir/anode up --config $config"
fi

# ── done ──────────────────────────────────────────────────────────────────────────────────
if [ "$dry_run" = 1 ]; then
    say "dry run finished: $changes step(s) would change something; nothing was changed"
elif [ "$changes" = 0 ]; then
    say "nothing changed: everything was already installed"
else
    say "done: $changes change(s)"
fi
note "binary   $bin_dir/anode"
note "config   $config"
note "data     $data_dir"
note "unit     $unit_file"
