# deploy check-network, node side: the planned pings from this node, in lanes that run at once.
# Set before this text (after hccn_retry.sh): RETRIES; then one `lane N '<tag> <src device>
# <ping|hccs_ping> <address> ...' &` line per lane, `wait` and `finish`.
# A lane runs its pings one after another: the client puts each device's pings in one lane, so a
# device has one ping in flight (hccn_tool answers "The device is occupied" to a second one).
# Per ping: one fork + exec of hccn_tool, its output appended to the lane's file (fd 3, opened
# once per lane: no temp file, subshell or `wait` per ping); a busy answer (rc 11) is retried in
# place with h's backoff. Output per ping: "@@ping <src device> <address> <tag>", the output,
# "@@rc <code>" ("@@busy" before each retry). The lanes' files are printed once all have ended
# (lanes writing to one stdout would interleave inside a record), without the lines of a healthy
# packet that the judgement never reads (`This pkt ping success!`, `recv seq N, time = ...us, L1
# plane check result = 0x0`, `recv seq=N,time=...ms`, the max/min/average/TP95 times, `Cmd
# executed successfully!`, blank lines): a fifth of the bytes. Every other line is kept: the
# statistics line, timeouts, failed packets, non-zero L1 results, errors.
set -f
T=$(mktemp -d) || exit 1
trap 'rm -rf "$T"' EXIT
lane() {
  exec 3>"$T/$1"
  set -- $2
  while [ $# -ge 4 ]; do
    echo "@@ping $2 $4 $1"
    h -i "$2" -"$3" -g address "$4"
    shift 4
  done >&3
}
finish() {
  set +f
  for f in "$T"/*; do [ -e "$f" ] || return 0; done
  grep -h -v -x -E -e '' -e 'This pkt ping success!' -e 'Cmd executed successfully!' \
    -e 'recv seq [0-9]+, time = [0-9.]+us, L1 plane check result = 0x0' \
    -e 'recv seq=[0-9]+,time=[0-9.]+ms' -e '(max|min|average|TP95) time [0-9.]+us' "$T"/* || :
}
