#!/bin/sh
# deploy ${name}: ${what}
# written by `deploy`; regenerate with: deploy plan INVENTORY --script ${node}
${prologue}
${exports}
exec ${command}
