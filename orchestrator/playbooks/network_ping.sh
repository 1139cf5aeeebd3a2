# deploy check-network, node side: the planned pings from this node, at most PARALLEL at once.
# Set before this text (after hccn_retry.sh): PAIRS (lines "<src device> <ping|hccs_ping>
# <address> <tag>"), PARALLEL, RETRIES.
# Output per ping: "@@ping <src device> <address> <tag>", the output, "@@rc <code>".
# Each ping is one background hccn_tool (no subshell); `wait PID` gives its exit code, and a
# busy answer (rc 11) is retried in place with h's backoff.
T=$(mktemp -d) || exit 1
trap 'rm -rf "$T"' EXIT
n=0
pending=
flush() {
  for j in $pending; do
    eval "pid=\$P$j args=\$A$j"
    wait "$pid"; rc=$?
    if [ "$rc" -eq 11 ]; then
      { echo "@@busy"; eval "h $args"; } >>"$T/$j"
    else
      echo "@@rc $rc" >>"$T/$j"
    fi
  done
  pending=
}
while read -r sd kind addr tag; do
  [ -n "$sd" ] || continue
  echo "@@ping $sd $addr $tag" >"$T/$n"
  hccn_tool -i "$sd" -"$kind" -g address "$addr" >>"$T/$n" 2>&1 &
  eval "P$n=\$! A$n=\"-i \$sd -\$kind -g address \$addr\""
  pending="$pending $n"
  n=$((n + 1))
  [ $((n % PARALLEL)) -ne 0 ] || flush
done <<PAIRS_END
$PAIRS
PAIRS_END
flush
[ "$n" -eq 0 ] || cat "$T"/*
