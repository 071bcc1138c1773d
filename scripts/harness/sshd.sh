#!/usr/bin/env bash
# A real OpenSSH server (Debian openssh-server) on loopback for hardware-discovery tests.
#
#   sshd.sh start STATE_DIR PORT [MODE]
#   sshd.sh stop STATE_DIR
#
# MODE (the stubs read it as PNBO_STUB_MODE):
#   normal             the default
#   hang               dmidecode and ip never return and ignore SIGTERM (root under sudo)
#   huge               dmidecode prints 3 MB
#   metachar           ip also lists two physical NICs named with shell code
#   no-remote-timeout  like hang, and `timeout` on the node enforces nothing
#   wrapper            like normal, but pnbo-key's keys are restricted to the forced-command
#                      wrapper of docs/hardware-discovery.md (stubs/netbox-discovery-wrapper)
#
# Users: pnbo-key (ed25519 key, and a passphrase-protected ed25519 key), pnbo-pass
# (password). Commands resolve to the stubs in scripts/harness/stubs (dmidecode, ip,
# ethtool print real captured outputs from shared/fixtures/hardware); pnbo-key may run
# `sudo -n timeout -k 2 N dmidecode -t 1` (and `-t 3`) and nothing else as root, with the
# sudoers line of docs/hardware-discovery.md. The ethtool stub appends its argv to
# STATE_DIR/stub.log; hung stubs run `sleep SSH_STUB_SLEEP` (unique per server). Writes
# STATE_DIR/sshd.env.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SUDO_STUBS=/usr/local/lib/pnbo-stubs

ensure_system() {
  if [ ! -x /usr/sbin/sshd ] || ! command -v sudo >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server sudo >/dev/null
  fi
  mkdir -p -m755 /run/sshd
  for u in pnbo-key pnbo-pass; do
    id "$u" >/dev/null 2>&1 || useradd -m -s /bin/sh "$u" 2>/dev/null || id "$u" >/dev/null
  done
  # Not locked (sshd refuses locked accounts), no usable password for the key user.
  usermod -p '*' pnbo-key
  # The dmidecode run through sudo: a fixed copy, allowed with exactly -t 1 and -t 3.
  mkdir -p "$SUDO_STUBS/sbin"
  # Copied only when they changed: tests start several servers at once.
  cmp -s "$HW/dmidecode/glpi-agent-05.txt" "$SUDO_STUBS/sbin/dmidecode.txt" || install -m 644 "$HW/dmidecode/glpi-agent-05.txt" "$SUDO_STUBS/sbin/dmidecode.txt"
  cmp -s "$HERE/stubs/dmidecode" "$SUDO_STUBS/sbin/dmidecode" || install -m 755 "$HERE/stubs/dmidecode" "$SUDO_STUBS/sbin/dmidecode"
  local tmp
  tmp="$(mktemp /etc/sudoers.d/.pnbo-XXXXXX)"
  # The rule of docs/hardware-discovery.md: `timeout` runs as root so it can kill a root
  # dmidecode. secure_path finds the stub dmidecode first; the stubs' mode variables pass.
  cat > "$tmp" <<SUDO
Defaults:pnbo-key secure_path="$SUDO_STUBS/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
Defaults:pnbo-key env_keep += "PNBO_STUB_MODE PNBO_STUB_SLEEP"
pnbo-key ALL=(root) NOPASSWD: $(command -v timeout) ^-k 2 [0-9]+ dmidecode -t [13]\$
SUDO
  chmod 440 "$tmp"
  visudo -c -q -f "$tmp" >/dev/null || { echo "sshd.sh: invalid sudoers rule" >&2; rm -f "$tmp"; exit 1; }
  cmp -s "$tmp" /etc/sudoers.d/pnbo-harness && rm -f "$tmp" || mv -f "$tmp" /etc/sudoers.d/pnbo-harness
  # One password for the password user, shared by every sshd instance (tests run in parallel).
  if [ ! -s "$SUDO_STUBS/pnbo-pass.password" ]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20 > "$SUDO_STUBS/pnbo-pass.password.$$")
    mv -n "$SUDO_STUBS/pnbo-pass.password.$$" "$SUDO_STUBS/pnbo-pass.password" 2>/dev/null || rm -f "$SUDO_STUBS/pnbo-pass.password.$$"
    echo "pnbo-pass:$(cat "$SUDO_STUBS/pnbo-pass.password")" | chpasswd
  fi
}

cmd_start() {
  local dir="$1" port="$2" mode="${3:-normal}"
  case "$mode" in
    normal|hang|huge|metachar|no-remote-timeout|wrapper) ;;
    *) echo "sshd.sh: unknown mode $mode" >&2; exit 2 ;;
  esac
  # shellcheck source=shared-dir.sh
  source "$HERE/shared-dir.sh"
  HW="$PNBO_SHARED_DIR/fixtures/hardware"
  ensure_system
  # A second start replaces the first: stop it before its files go (it would keep the port).
  cmd_stop "$dir"
  rm -rf "$dir"
  mkdir -p "$dir/authorized_keys"
  chmod 755 "$dir" "$dir/authorized_keys"
  ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh_host_ed25519_key" -C pnbo-host
  ssh-keygen -q -t ed25519 -N '' -f "$dir/id_ed25519" -C pnbo-key
  local passphrase
  passphrase="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20)"
  ssh-keygen -q -t ed25519 -N "$passphrase" -f "$dir/id_ed25519_passphrase" -C pnbo-key-passphrase
  ssh-keygen -q -t ed25519 -N '' -f "$dir/id_ed25519_unknown" -C not-authorized
  local options=""
  if [ "$mode" = wrapper ]; then
    # As docs/hardware-discovery.md has it, from= aside.
    options="restrict,from=\"127.0.0.1\",command=\"$HERE/stubs/netbox-discovery-wrapper\" "
  fi
  sed "s|^|$options|" "$dir/id_ed25519.pub" "$dir/id_ed25519_passphrase.pub" > "$dir/authorized_keys/pnbo-key"
  chown pnbo-key "$dir/authorized_keys/pnbo-key"
  chmod 600 "$dir/authorized_keys/pnbo-key"
  local password
  password="$(cat "$SUDO_STUBS/pnbo-pass.password")"
  local path="$HERE/stubs:/usr/local/bin:/usr/bin:/bin"
  [ "$mode" = no-remote-timeout ] && path="$HERE/stubs/no-remote-timeout:$path"
  local sleep_secs=$((200000 + port))
  # The stubs run as the test users and append to this.
  : > "$dir/stub.log"
  chmod 666 "$dir/stub.log"
  cat > "$dir/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys/%u
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers pnbo-key pnbo-pass
StrictModes no
LogLevel VERBOSE
MaxStartups 50:30:100
SetEnv PATH=$path PNBO_STUB_MODE=$mode PNBO_STUB_SLEEP=$sleep_secs PNBO_STUB_LOG=$dir/stub.log PNBO_STUB_DMI=$HW/dmidecode/glpi-agent-05.txt PNBO_STUB_ETHTOOL_1G=$HW/ethtool/issue-rr-01.txt PNBO_STUB_ETHTOOL_10G=$HW/ethtool/adamxiao-01.txt PNBO_STUB_ETHTOOL_NO_LINK=$HW/ethtool/issue-zyxel-gpon-sfp-01.txt
CFG
  /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
  for _ in $(seq 50); do [ -s "$dir/sshd.pid" ] && break; sleep 0.1; done
  local fp
  fp="$(ssh-keygen -lf "$dir/ssh_host_ed25519_key.pub" | awk '{print $2}')"
  umask 077
  cat > "$dir/sshd.env" <<ENV
SSH_HOST=127.0.0.1
SSH_PORT=$port
SSH_HOST_FINGERPRINT=$fp
SSH_KEY_USER=pnbo-key
SSH_KEY_FILE=$dir/id_ed25519
SSH_PASSPHRASE_KEY_FILE=$dir/id_ed25519_passphrase
SSH_PASSPHRASE=$passphrase
SSH_UNKNOWN_KEY_FILE=$dir/id_ed25519_unknown
SSH_PASSWORD_USER=pnbo-pass
SSH_PASSWORD=$password
SSH_LOG=$dir/sshd.log
SSH_PID_FILE=$dir/sshd.pid
SSH_MODE=$mode
SSH_STUB_LOG=$dir/stub.log
SSH_STUB_SLEEP=$sleep_secs
SSH_KEY_HOME=$(getent passwd pnbo-key | cut -d: -f6)
ENV
}

cmd_stop() {
  local dir="$1"
  if [ -f "$dir/sshd.pid" ]; then
    local pid
    pid="$(cat "$dir/sshd.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$dir/sshd.pid"
  fi
}

case "${1:-}" in
  start) cmd_start "${2:?state dir}" "${3:?port}" "${4:-normal}" ;;
  stop) cmd_stop "${2:?state dir}" ;;
  *) echo "usage: $0 start STATE_DIR PORT [normal|hang|huge|metachar|no-remote-timeout|wrapper] | stop STATE_DIR" >&2; exit 2 ;;
esac
