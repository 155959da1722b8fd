#!/usr/bin/env bash
# A one-machine Ray "cluster" for trying the README's `ray job submit` commands on a laptop.
#
#   cluster/local.sh start     # Ray head on 127.0.0.1: dashboard and job server at http://127.0.0.1:8265
#   export RAY_ADDRESS=http://127.0.0.1:8265 RAY_AUTH_MODE=token
#   .venv/bin/python jobs/submit.py --no-pip -- python jobs/train.py --smoke-test
#   .venv/bin/ray job submit --runtime-env jobs/runtime_env.yaml -- python jobs/train.py --smoke-test
#   cluster/local.sh status
#   cluster/local.sh stop      # stops this head only
#
# The head keeps its files in its own temp dir (ANIMEGAN_RAY_TEMP_DIR), and `stop` ends only the
# processes of that head: `ray stop` would end every Ray instance of this user on the machine,
# notebooks and test sessions included. Ports and sizes come from the environment:
#   ANIMEGAN_RAY_PORT (6379: GCS)          ANIMEGAN_DASHBOARD_PORT (8265: dashboard and job server)
#   ANIMEGAN_CLIENT_PORT (10001)           ANIMEGAN_AGENT_PORT (52365: dashboard agent, runs the jobs)
#   ANIMEGAN_NUM_CPUS (all cores)          ANIMEGAN_RAY_TEMP_DIR (${TMPDIR:-/tmp}/animegan-ray)
#   ANIMEGAN_RAY_BIN (the repository's .venv/bin/ray, else `ray` on PATH)
# Job entry points run `python` from the head's PATH: the repository's .venv comes first.
# W&B: jobs on this head read WANDB_API_KEY from the shell that ran `start` (the head's processes
# inherit it), or `wandb login`'s ~/.netrc; jobs/submit.py never sends a key. Without either they
# log offline. `start` says which.
# The head requires Ray's token (RAY_AUTH_MODE=token, as Ray's own local clusters do): without it,
# anyone who can reach its ports could run code as you. The token is RAY_AUTH_TOKEN_PATH's file
# (default ~/.ray/auth_token), made if missing; clients need RAY_AUTH_MODE=token too.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
temp_dir="${ANIMEGAN_RAY_TEMP_DIR:-${TMPDIR:-/tmp}/animegan-ray}"
[[ "$temp_dir" == /* ]] || temp_dir="$PWD/$temp_dir"
temp_dir="${temp_dir%/}"
pid_file="$temp_dir/head.pid"
gcs_port="${ANIMEGAN_RAY_PORT:-6379}"
dashboard_port="${ANIMEGAN_DASHBOARD_PORT:-8265}"
client_port="${ANIMEGAN_CLIENT_PORT:-10001}"
agent_port="${ANIMEGAN_AGENT_PORT:-52365}"

if [[ -x "$repo/.venv/bin/ray" ]]; then
    export PATH="$repo/.venv/bin:$PATH"
fi
ray_bin="${ANIMEGAN_RAY_BIN:-$(command -v ray || true)}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"

# Every process of this head: those naming its temp dir (all of Ray's daemons do), those in the
# process group `start` gave it (only while a process of the group names the temp dir: a stale
# pid file must not point at someone else's processes), and all their descendants (workers,
# agents, job drivers). This script and its own children (ps, awk) are left out, and so are
# zombies (state Z): they have ended and only wait for their parent to reap them.
head_processes() {
    local group=""
    [[ -f "$pid_file" ]] && group="$(cat "$pid_file")"
    ps -ww -eo pid=,ppid=,pgid=,stat=,args= | awk -v dir="$temp_dir/" -v group="$group" -v self="$$" '
        { pid[NR] = $1; parent[$1] = $2; pgid[$1] = $3
          if ($4 ~ /^Z/) zombie[$1] = 1
          else if (index($0, dir) > 0) { mine[$1] = 1; named_group[$3] = 1 } }
        END {
            ours[self] = 1
            for (i = 1; i <= NR; i++) if (group != "" && pgid[pid[i]] == group && (group in named_group)) mine[pid[i]] = 1
            # Process trees are shallow: repeat until no descendant is added.
            do { added = 0
                 for (i = 1; i <= NR; i++) { p = pid[i]
                     if (!(p in ours) && (parent[p] in ours)) { ours[p] = 1; added = 1 }
                     if (!(p in mine) && (parent[p] in mine)) { mine[p] = 1; added = 1 } }
            } while (added)
            for (p in mine) if (!(p in ours) && !(p in zombie)) print p
        }'
}

start() {
    if [[ -z "$ray_bin" ]]; then
        echo "local.sh: no ray command found; run \`make install\` first" >&2
        exit 2
    fi
    if [[ -n "$(head_processes)" ]]; then
        echo "local.sh: a head is already running from $temp_dir; \`$0 stop\` it first" >&2
        exit 2
    fi
    mkdir -p "$temp_dir"
    if [[ "$RAY_AUTH_MODE" == token && -z "${RAY_AUTH_TOKEN:-}" && ! -s "$token_file" ]]; then
        mkdir -p "$(dirname "$token_file")"
        (umask 077; od -vAn -N32 -tx1 /dev/urandom | tr -d ' \n' > "$token_file")
        echo "Made a Ray token in $token_file"
    fi
    # Processes that look for "the" local Ray instance (Ray Train's placement-group cleaner does)
    # must find this one even when other instances run on the machine. `ray start` ignores it.
    export RAY_ADDRESS="127.0.0.1:$gcs_port"
    # setsid: the head's daemons get a process group of their own (macOS has no setsid; there
    # `stop` finds them by their temp dir alone).
    local detach=()
    command -v setsid >/dev/null && detach=(setsid)
    ${detach[@]+"${detach[@]}"} "$ray_bin" start --head \
        --node-ip-address=127.0.0.1 --port="$gcs_port" \
        --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port" \
        --ray-client-server-port="$client_port" --dashboard-agent-listen-port="$agent_port" \
        --temp-dir="$temp_dir" ${ANIMEGAN_NUM_CPUS:+--num-cpus="$ANIMEGAN_NUM_CPUS"} \
        --disable-usage-stats &
    local starter=$!
    echo "$starter" > "$pid_file"
    if ! wait "$starter"; then
        echo "local.sh: ray start failed; logs in $temp_dir/session_latest/logs" >&2
        stop >/dev/null
        exit 1
    fi
    echo "Ray head running: dashboard and job server at http://127.0.0.1:$dashboard_port"
    if [[ -n "${WANDB_API_KEY:-}" ]]; then
        echo "  W&B: jobs on this head use WANDB_API_KEY from this shell (it is never sent with a job)"
    else
        echo "  W&B: no WANDB_API_KEY in this shell: jobs use \`wandb login\`'s ~/.netrc if any, else log offline"
    fi
    echo "  export RAY_ADDRESS=http://127.0.0.1:$dashboard_port RAY_AUTH_MODE=$RAY_AUTH_MODE"
    echo "  stop it with: $0 stop"
}

# The processes among the given pids that still run (zombies have ended).
alive() {
    local pid state
    for pid in "$@"; do
        state="$(ps -o stat= -p "$pid" 2>/dev/null || true)"
        [[ -n "$state" && "$state" != Z* ]] && echo "$pid"
    done
    return 0
}

# SIGTERM to the given pids, then up to 10 s for them to end.
terminate() {
    [[ $# -eq 0 ]] && return 0
    kill -TERM "$@" 2>/dev/null || true
    for _ in $(seq 50); do
        [[ -z "$(alive "$@")" ]] && return 0
        sleep 0.2
    done
}

stop() {
    # One snapshot first: once the raylet ends, its workers are no longer its descendants.
    local processes raylets=() servers=() others=() pid command
    processes="$(head_processes)"
    if [[ -z "$processes" ]]; then
        echo "No Ray head of $temp_dir is running"
        rm -f "$pid_file"
        return 0
    fi
    for pid in $processes; do
        command="$(ps -ww -o args= -p "$pid" 2>/dev/null || true)"
        case "$command" in
            */raylet/raylet*) raylets+=("$pid") ;;
            */gcs/gcs_server*) servers+=("$pid") ;;
            *) others+=("$pid") ;;
        esac
    done
    # In `ray stop`'s order: the raylet first (its workers and agents follow it), the GCS last;
    # all at once, the raylet and the GCS wait for each other until SIGKILL.
    # (The ${a[@]+...} form keeps an empty list empty under `set -u` in bash 3, as on macOS.)
    terminate ${raylets[@]+"${raylets[@]}"}
    terminate $(alive ${others[@]+"${others[@]}"})
    terminate ${servers[@]+"${servers[@]}"}
    local left
    left="$(alive $processes)"
    if [[ -n "$left" ]]; then
        kill -KILL $left 2>/dev/null || true
        sleep 1
    fi
    left="$(alive $processes)"
    if [[ -n "$left" ]]; then
        echo "local.sh: some processes of the head in $temp_dir did not stop: $(echo $left)" >&2
        exit 1
    fi
    rm -f "$pid_file"
    # Ray's per-job environments (copies of a venv for `pip`, unpacked working dirs) are only caches.
    rm -rf "$temp_dir"/session_*/runtime_resources
    echo "Stopped the Ray head of $temp_dir (its logs stay in $temp_dir/session_*/logs)"
}

status() {
    if [[ -z "$(head_processes)" ]]; then
        echo "No Ray head of $temp_dir is running"
        return 3
    fi
    "$ray_bin" status --address="127.0.0.1:$gcs_port"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
