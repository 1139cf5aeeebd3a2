# deploy check-network, node side: the planned pings from this node, streamed back as they end.
# Set before this text (after hccn_retry.sh): RETRIES; then one `lane '<tag> <src device>
# <ping|hccs_ping> <address> ...' &` line per lane, and `wait`.
# A lane runs its pings one after another: the client puts each device's pings in one lane, so a
# device has one ping in flight (hccn_tool answers "The device is occupied" to a second one).
# Output per ping, written with one printf as soon as it ends (a few hundred bytes: one write,
# so lanes never interleave inside a record): "@@ping <src device> <address> <tag>", "@@busy"
# per busy answer retried (rc 11, with h's backoff), the tool's output, "@@rc <code>".
# Per ping: one fork + exec of hccn_tool (the command substitution); no temp file, no wait.
set -f
lane() {
  set -- $1
  while [ $# -ge 4 ]; do
    _b=
    _t=0
    while :; do
      _o=$(hccn_tool -i "$2" -"$3" -g address "$4" 2>&1); _rc=$?
      { [ "$_rc" -eq 11 ] && [ "$_t" -lt "$RETRIES" ]; } || break
      _t=$((_t + 1)); _b="$_b@@busy
"
      case $_t in 1) sleep 0.1;; 2) sleep 0.3;; 3) sleep 0.7;; *) sleep 1.5;; esac
    done
    printf '@@ping %s %s %s\n%s%s\n@@rc %s\n' "$2" "$4" "$1" "$_b" "$_o" "$_rc"
    shift 4
  done
}
