# deploy check-network, node side: the planned pings from this node, at most PARALLEL at once.
# Set before this text (after hccn_retry.sh): PAIRS (lines "<src device> <ping|hccs_ping> <address> <tag>"), PARALLEL,
# RETRIES. Output per ping: "@@ping <src device> <address> <tag>", the output, "@@rc <code>".
T=$(mktemp -d) || exit 1
trap 'rm -rf "$T"' EXIT
n=0
while read -r sd kind addr tag; do
  [ -n "$sd" ] || continue
  { echo "@@ping $sd $addr $tag"; h -i "$sd" -"$kind" -g address "$addr"; } >"$T/$n" &
  n=$((n + 1))
  [ $((n % PARALLEL)) -ne 0 ] || wait
done <<PAIRS_END
$PAIRS
PAIRS_END
wait
for f in "$T"/*; do [ -e "$f" ] && cat "$f"; done
