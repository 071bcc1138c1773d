#!/usr/bin/env bash
# A real OpenSSH server (Debian openssh-server) on loopback for hardware-discovery tests.
#
#   sshd.sh start STATE_DIR PORT [MODE]   MODE: normal (default), hang, huge
#   sshd.sh stop STATE_DIR
#
# Users: pnbo-key (ed25519 key, and a passphrase-protected ed25519 key), pnbo-pass
# (password). Commands resolve to the stubs in scripts/harness/stubs (dmidecode, ip,
# ethtool print real captured outputs from shared/fixtures/hardware); `sudo -n dmidecode`
# works for pnbo-key only for `-t 1` and `-t 3`. Writes STATE_DIR/sshd.env.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SHARED="${PNBO_SHARED_DIR:-$(cd "$REPO/.." && pwd)/shared}"
HW="$SHARED/fixtures/hardware"
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
  cat > "$tmp" <<SUDO
Defaults:pnbo-key secure_path="$SUDO_STUBS/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
pnbo-key ALL=(root) NOPASSWD: $SUDO_STUBS/sbin/dmidecode -t 1, $SUDO_STUBS/sbin/dmidecode -t 3
SUDO
  chmod 440 "$tmp"
  mv -f "$tmp" /etc/sudoers.d/pnbo-harness
  # One password for the password user, shared by every sshd instance (tests run in parallel).
  if [ ! -s "$SUDO_STUBS/pnbo-pass.password" ]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20 > "$SUDO_STUBS/pnbo-pass.password.$$")
    mv -n "$SUDO_STUBS/pnbo-pass.password.$$" "$SUDO_STUBS/pnbo-pass.password" 2>/dev/null || rm -f "$SUDO_STUBS/pnbo-pass.password.$$"
    echo "pnbo-pass:$(cat "$SUDO_STUBS/pnbo-pass.password")" | chpasswd
  fi
}

cmd_start() {
  local dir="$1" port="$2" mode="${3:-normal}"
  ensure_system
  rm -rf "$dir"
  mkdir -p "$dir/authorized_keys"
  chmod 755 "$dir" "$dir/authorized_keys"
  ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh_host_ed25519_key" -C pnbo-host
  ssh-keygen -q -t ed25519 -N '' -f "$dir/id_ed25519" -C pnbo-key
  local passphrase
  passphrase="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20)"
  ssh-keygen -q -t ed25519 -N "$passphrase" -f "$dir/id_ed25519_passphrase" -C pnbo-key-passphrase
  ssh-keygen -q -t ed25519 -N '' -f "$dir/id_ed25519_unknown" -C not-authorized
  cat "$dir/id_ed25519.pub" "$dir/id_ed25519_passphrase.pub" > "$dir/authorized_keys/pnbo-key"
  chown pnbo-key "$dir/authorized_keys/pnbo-key"
  chmod 600 "$dir/authorized_keys/pnbo-key"
  local password
  password="$(cat "$SUDO_STUBS/pnbo-pass.password")"
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
SetEnv PATH=$HERE/stubs:/usr/local/bin:/usr/bin:/bin PNBO_STUB_MODE=$mode PNBO_STUB_DMI=$HW/dmidecode/glpi-agent-05.txt PNBO_STUB_ETHTOOL_1G=$HW/ethtool/issue-rr-01.txt PNBO_STUB_ETHTOOL_10G=$HW/ethtool/adamxiao-01.txt
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
ENV
}

cmd_stop() {
  local dir="$1"
  if [ -f "$dir/sshd.pid" ]; then
    kill "$(cat "$dir/sshd.pid")" 2>/dev/null || true
    rm -f "$dir/sshd.pid"
  fi
}

case "${1:-}" in
  start) cmd_start "${2:?state dir}" "${3:?port}" "${4:-normal}" ;;
  stop) cmd_stop "${2:?state dir}" ;;
  *) echo "usage: $0 start STATE_DIR PORT [normal|hang|huge] | stop STATE_DIR" >&2; exit 2 ;;
esac
