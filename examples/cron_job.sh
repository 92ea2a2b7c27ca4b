#!/usr/bin/env bash
# A shell cron job calling Genesys Cloud with curl and the `genesys-token` command.
#
#   */5 * * * * GENESYSCLOUD_OAUTHCLIENT_ID=... GENESYSCLOUD_OAUTHCLIENT_SECRET=... \
#       GENESYSCLOUD_API_URL=https://api.mypurecloud.ie /opt/jobs/cron_job.sh
#
# `genesys-token token` prints a valid token and caches it in GENESYSCLOUD_TOKEN_CACHE
# (default ~/.cache/genesys-token), so runs share one token until it is due for refresh.
# Its exit status says why it failed: 2 configuration, 3 credentials rejected, 4 unavailable.
set -euo pipefail

api_url="${GENESYSCLOUD_API_URL:?set GENESYSCLOUD_API_URL, e.g. https://api.mypurecloud.com}"
token="$(genesys-token token)"

# The simple form is `curl -H "Authorization: Bearer $(genesys-token token)" ...`, but
# arguments are visible to every user of the host in `ps`. `-H @-` reads the header from
# stdin instead; printf is a shell builtin, so the token never appears in a process list.
printf 'Authorization: Bearer %s\n' "${token}" |
    curl --silent --show-error --fail --max-time 30 -H @- \
        "${api_url}/api/v2/organizations/me"
echo
