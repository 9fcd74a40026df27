# Sourced by the set-up scripts: run a command as root, and apt-install what a host lacks.
# CI runs as root; a developer's machine goes through sudo.

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt_install PACKAGE...: Debian packages without recommends, non-interactively.
apt_install() {
    as_root apt-get update
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y --no-install-recommends "$@"
}
