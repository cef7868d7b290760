#!/usr/bin/env bash
# S3 from GCP without keys: writes this VM's Google-signed identity token to
# $AWS_WEB_IDENTITY_TOKEN_FILE, where botocore (s3fs) and pyarrow (Ray Train) read it to call AWS STS
# AssumeRoleWithWebIdentity for $AWS_ROLE_ARN, re-reading it whenever they refresh credentials.
#   gcp_identity_token.sh --once    fetch one token, then exit (before `ray start`)
#   gcp_identity_token.sh           keep it fresh: Google identity tokens expire after an hour
# Uses python3 (in every Ray image) rather than curl, which the image may lack.
set -euo pipefail
export AUDIENCE="${AWS_WEB_IDENTITY_AUDIENCE:-sts.amazonaws.com}"
refresh_s=1800

fetch() {
  python3 - <<'PY'
import os, urllib.request
url = ("http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/identity"
       f"?audience={os.environ['AUDIENCE']}&format=full")
token = urllib.request.urlopen(urllib.request.Request(url, headers={"Metadata-Flavor": "Google"}), timeout=10).read()
path = os.environ["AWS_WEB_IDENTITY_TOKEN_FILE"]
with open(path + ".tmp", "wb") as f:
    f.write(token)
os.replace(path + ".tmp", path)  # readers never see a partial token
PY
}

fetch
[[ "${1:-}" == "--once" ]] && exit 0
while sleep "$refresh_s"; do
  fetch || echo "identity token refresh failed; retrying in ${refresh_s}s" >&2
done
