#!/usr/bin/env bash
# Start an SSH server on 127.0.0.1 for the tunnel tests, with keys made for the test.
#
#   scripts/sshd-up.sh [DIR]      (default: /tmp/steadyrun-sshd)
#
# Installs openssh-server with apt-get when missing (root only). Makes a host key and a
# user key (ssh-keygen), authorizes the user key for the current user, starts sshd on a
# free port (keys only, no passwords), and writes DIR/known_hosts for that port. Prints
# PORT=, IDENTITY=, KNOWN_HOSTS= lines. Stop with scripts/sshd-down.sh DIR.
set -euo pipefail

DIR=${1:-${STEADYRUN_SSHD_DIR:-/tmp/steadyrun-sshd}}

if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "sshd-up: openssh-server is not installed and this is not root with apt-get" >&2
        exit 77
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends openssh-server openssh-client >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y --no-install-recommends openssh-server openssh-client >/dev/null
    }
fi

"$(dirname "$0")/sshd-down.sh" "$DIR" >/dev/null 2>&1 || true
rm -rf "$DIR"
mkdir -p "$DIR" /run/sshd
chmod 700 "$DIR"
ssh-keygen -q -t ed25519 -N '' -f "$DIR/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -f "$DIR/id_ed25519"
cp "$DIR/id_ed25519.pub" "$DIR/authorized_keys"
chmod 600 "$DIR/authorized_keys"

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$DIR/sshd_config" <<CONF
Port $PORT
ListenAddress 127.0.0.1
HostKey $DIR/host_ed25519
PidFile $DIR/sshd.pid
AuthorizedKeysFile $DIR/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PermitUserEnvironment no
Subsystem sftp internal-sftp
CONF
/usr/sbin/sshd -f "$DIR/sshd_config" -E "$DIR/sshd.log"
echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$DIR/host_ed25519.pub")" > "$DIR/known_hosts"
echo "$PORT" > "$DIR/port"
for _ in $(seq 50); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null; then
        echo "PORT=$PORT"
        echo "IDENTITY=$DIR/id_ed25519"
        echo "KNOWN_HOSTS=$DIR/known_hosts"
        exit 0
    fi
    sleep 0.1
done
echo "sshd-up: sshd did not listen on 127.0.0.1:$PORT; see $DIR/sshd.log" >&2
exit 1
