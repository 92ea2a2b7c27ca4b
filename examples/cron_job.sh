#!/usr/bin/env bash
# A shell cron job calling Genesys Cloud with curl and the `genesys-token` command.
#
# crontab -e (cron has no line continuation: one job, one line; the variables are crontab
# settings, so no secret is on a command line, which every local user can read in
# /proc/<pid>/cmdline):
#
#   GENESYSCLOUD_OAUTHCLIENT_ID=your-client-id
#   GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE=/home/jobs/.genesys/secret
#   GENESYSCLOUD_API_URL=https://api.mypurecloud.ie
#   */5 * * * * /opt/jobs/cron_job.sh
#
# The secret file holds the client secret alone and only its owner may read it:
#   (umask 077; mkdir -p ~/.genesys; read -rs s; printf '%s\n' "$s" > ~/.genesys/secret)
#
# `genesys-token token` prints a valid token and caches it in GENESYSCLOUD_TOKEN_CACHE
# (default ~/.cache/genesys-token), so runs share one token until it is due for refresh.
# Its exit status says why it failed: 2 configuration, 3 credentials rejected, 4 unavailable.
set -euo pipefail

api_url="${GENESYSCLOUD_API_URL:?set GENESYSCLOUD_API_URL, e.g. https://api.mypurecloud.com}"
secret_file="${GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE:-}"
if [[ -n "${secret_file}" && -n "$(find "${secret_file}" -maxdepth 0 -perm /077 2>/dev/null)" ]]
then
    echo "cron_job.sh: ${secret_file} is readable by other users: chmod 600 it" >&2
    exit 2
fi
token="$(genesys-token token)"

# The simple form is `curl -H "Authorization: Bearer $(genesys-token token)" ...`, but
# arguments are visible to every user of the host in `ps`. `-H @-` reads the header from
# stdin instead; printf is a shell builtin, so the token never appears in a process list.
printf 'Authorization: Bearer %s\n' "${token}" |
    curl --silent --show-error --fail --max-time 30 -H @- \
        "${api_url}/api/v2/organizations/me"
echo
