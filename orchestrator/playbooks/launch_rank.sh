#!/bin/sh
# deploy ${name}: ${what}
# written by `deploy`; regenerate with: deploy plan INVENTORY --script ${node}
${exports}
exec ${command}
