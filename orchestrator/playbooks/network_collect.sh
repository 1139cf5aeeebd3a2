# deploy check-network, node side: every fact about this node's NPU network in one round trip.
# Set before this text (after hccn_retry.sh): SOC (a2|a3), DEVICES (phy ids), RETRIES.
# Output: sections "@@<name> [device]", the tool's stdout+stderr, then "@@rc <exit code>";
# "@@busy" inside a section means hccn_tool answered busy and the command was retried.
s() { echo "@@$1"; shift; "$@" 2>&1; echo "@@rc $?"; }
s npu-l npu-smi info -l
s npu-m npu-smi info -m
s npu-info npu-smi info
s board npu-smi info -t board -i 0
s hccn-conf cat "${HCCN_CONF:-/etc/hccn.conf}"
s cann sh -c 'cat "${ASCEND_TOOLKIT_HOME:-/usr/local/Ascend/ascend-toolkit/latest}"/*/ascend_toolkit_install.info'
for d in $DEVICES; do
  for c in link net_health ip tls netdetect gateway lldp; do
    echo "@@$c $d"; h -i "$d" -$c -g
  done
  if [ "$SOC" = a3 ]; then
    echo "@@vnic $d"; h -i "$d" -vnic -g
    s "spod $d" npu-smi info -t spod-info -i $((d / 2)) -c $((d % 2))
  fi
done
