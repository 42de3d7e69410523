#!/usr/bin/env bash
# Installs what the project's run and test commands need on a Debian machine: jq and curl for
# the README examples, python3-aiosmtpd (an SMTP server for the mail tests), cloud-init (to
# check the rendered node bootstrap against its schema), and, for the node agent's tests,
# userspace WireGuard and iproute2.
# Safe to run again: it installs only what is missing.
set -euo pipefail

command -v cargo >/dev/null || { echo "setup: cargo is required (install Rust with rustup)" >&2; exit 1; }

need=()
command -v jq >/dev/null || need+=(jq)
command -v curl >/dev/null || need+=(curl)
command -v wireguard-go >/dev/null || need+=(wireguard-go)
command -v ping >/dev/null || need+=(iputils-ping)
command -v wg >/dev/null || need+=(wireguard-tools)
command -v ip >/dev/null || need+=(iproute2)
# cloud-init's own schema check for the rendered node bootstrap document.
command -v cloud-init >/dev/null || need+=(cloud-init)
# A real SMTP server on loopback for the mail tests.
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || need+=(python3-aiosmtpd)

if ((${#need[@]})); then
  if [ "$(id -u)" -eq 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null; then
    sudo=(sudo)
  else
    echo "setup: root is needed to install: ${need[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
