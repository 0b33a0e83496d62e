#!/usr/bin/env bash
# Render the nginx site for www.capibara6.com to stdout.
#
#   deploy/nginx/render.sh [ENV_FILE] > /etc/nginx/sites-available/capibara6.conf
#
# Fills each ${CAPIBARA_*} placeholder of capibara6.conf.template with its value from ENV_FILE
# (default: capibara6.env beside this script); a variable already set in the environment wins.
# Only the CAPIBARA_* names listed in ENV_FILE are substituted, so nginx's own $variables stay as they are.
# Fails if the template uses a placeholder that ENV_FILE does not define. Needs envsubst (Debian: gettext-base).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
env_file="${1:-$here/capibara6.env}"
template="$here/capibara6.conf.template"

names=()
while IFS= read -r line; do
  [[ "$line" =~ ^(CAPIBARA_[A-Z0-9_]+)=(.*)$ ]] || continue
  name="${BASH_REMATCH[1]}"
  names+=("$name")
  if [ -z "${!name+set}" ]; then
    export "$name=${BASH_REMATCH[2]}"
  fi
done < "$env_file"

missing=()
for used in $(grep -o '\${CAPIBARA_[A-Z0-9_]*}' "$template" | sort -u | tr -d '${}'); do
  [[ " ${names[*]} " == *" $used "* ]] || missing+=("$used")
done
if [ ${#missing[@]} -ne 0 ]; then
  echo "render.sh: $env_file does not define: ${missing[*]}" >&2
  exit 1
fi

envsubst "$(printf '${%s} ' "${names[@]}")" < "$template"
