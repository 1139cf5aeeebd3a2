# deploy check-network, node side: every fact about this node's NPU network in one round trip.
# Set before this text (after hccn_retry.sh): SOC (a2|a3), DEVICES (phy ids), RETRIES.
# Output: sections "@@<name> [device]", the tool's stdout+stderr, then "@@rc <exit code>";
# "@@busy" inside a section means hccn_tool answered busy and the command was retried.
s() { echo "@@$1"; shift; "$@" 2>&1; echo "@@rc $?"; }
# Each block's output is gathered and written at once (one command substitution per device): a
# tool's every line would otherwise reach sshd as its own read, its own SSH packet and wake-up of
# the client (~250 packets a node, most of the client's work); a hung tool still leaves every
# finished device's sections behind. `$(...)` drops the block's last newline: printf restores it.
o=$(
s npu-l npu-smi info -l
s npu-m npu-smi info -m
s npu-info npu-smi info
s board npu-smi info -t board -i 0
s hccn-conf cat "${HCCN_CONF:-/etc/hccn.conf}"
s cann sh -c 'cat "${ASCEND_TOOLKIT_HOME:-/usr/local/Ascend/ascend-toolkit/latest}"/*/ascend_toolkit_install.info'
)
printf '%s\n' "$o"
for d in $DEVICES; do
  o=$(
  for c in link net_health ip tls netdetect gateway lldp; do
    echo "@@$c $d"; h -i "$d" -$c -g
  done
  if [ "$SOC" = a3 ]; then
    echo "@@vnic $d"; h -i "$d" -vnic -g
    s "spod $d" npu-smi info -t spod-info -i $((d / 2)) -c $((d % 2))
  fi
  )
  printf '%s\n' "$o"
done
