#!/usr/bin/env bash
# Installs the Debian packages hocba-signer and its tests need, if any is missing.
set -euo pipefail
# prometheus: promtool (checks the scrape and the alert rules); systemd: systemd-analyze;
# qpdf: the PDF tests rewrite records with it and check signed files with qpdf --check.
packages=(softhsm2 p11-kit fonts-dejavu-core poppler-utils openssl prometheus systemd qpdf)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "Installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
