# h ARGS...: hccn_tool, retried with backoff while it answers busy (rc 11, "hccn_tool is busy");
# prints "@@busy" before each retry and "@@rc <exit code>" at the end. Needs RETRIES.
h() {
  _t=0
  while :; do
    hccn_tool "$@" 2>&1; _rc=$?
    { [ "$_rc" -eq 11 ] && [ "$_t" -lt "$RETRIES" ]; } || break
    _t=$((_t + 1)); echo "@@busy"
    case $_t in 1) sleep 0.1;; 2) sleep 0.3;; 3) sleep 0.7;; *) sleep 1.5;; esac
  done
  echo "@@rc $_rc"
}
