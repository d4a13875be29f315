#!/usr/bin/env bash
# The Debian packages the demo and the tests need, installed if any is missing; fast
# (one dpkg-query) when all are there. Starts nothing: the demo and the tests use the
# machine's services when they serve, else start private ones (HOCBA_SERVICES).
set -euo pipefail
packages=(
  # The services themselves (also what the private instances run: initdb, rabbitmq-server,
  # mosquitto) and the Python to build the virtual environment with.
  postgresql rabbitmq-server mosquitto
  python3 python3-venv
  # The project: the dev HSM and its network proxy; qpdf rewrites records in the PDF tests
  # and checks signed files; poppler-utils renders them; DejaVu is the sample PDFs' font;
  # openssl checks package seals; prometheus gives promtool (scrape and alert rules);
  # systemd gives systemd-analyze (the unit files).
  softhsm2 p11-kit qpdf poppler-utils fonts-dejavu-core openssl prometheus systemd
  # For the issues to come; append here. chromium: browser tests of the verify page;
  # zbar-tools: reading the QR codes back; libxml2-utils: xmllint against XML schemas;
  # nodejs, npm: the AsyncAPI validator.
  chromium zbar-tools libxml2-utils nodejs npm
)
installed="$(dpkg-query -W -f='${Package} ${Status}\n' "${packages[@]}" 2>/dev/null \
  | awk '$4 == "installed" {print $1}' || true)"
missing=()
# A command another package already provides counts (NodeSource's nodejs ships npm and
# conflicts with Debian's).
declare -A provides=([nodejs]=node [npm]=npm)
for p in "${packages[@]}"; do
  grep -qx "$p" <<<"$installed" && continue
  [ -n "${provides[$p]:-}" ] && command -v "${provides[$p]}" >/dev/null && continue
  missing+=("$p")
done
if ((${#missing[@]})); then
  echo "Installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
