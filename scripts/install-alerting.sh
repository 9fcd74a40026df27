#!/usr/bin/env bash
# Make Prometheus' promtool and Alertmanager available, for the alerting tests on a machine that
# may have neither: tests/unit/test_alerting_rules.py checks deploy/prometheus/rules.yml and runs
# its unit tests with promtool, and the forwarder's tests start an Alertmanager of their own on a
# loopback port.
#
# Idempotent: does nothing when both are on PATH. Otherwise installs Debian's `prometheus` (which
# brings promtool) and `prometheus-alertmanager` with no recommends, and never lets their
# packages start the Debian services: a daemon left running would hold ports 9090/9093 and scrape
# or notify nothing of ours. A policy-rc.d that refuses every start is put in place for the
# install (unless the host has one already, as Docker images do), and whatever still came up is
# stopped.
#
#   scripts/install-alerting.sh      prints where promtool, prometheus and alertmanager are
#   env: APT_LOG (apt's output, shown only on failure; default /tmp/install-alerting.log)
set -euo pipefail
cd "$(dirname "$0")/.."

LOG_FILE="${APT_LOG:-/tmp/install-alerting.log}"
POLICY=/usr/sbin/policy-rc.d

. scripts/lib/root.sh

# Debian names the Alertmanager binary prometheus-alertmanager; upstream's tarball alertmanager.
alertmanager_binary() {
    command -v prometheus-alertmanager 2>/dev/null || command -v alertmanager 2>/dev/null
}

report() {
    echo "install-alerting: promtool: $(command -v promtool)"
    echo "install-alerting: prometheus: $(command -v prometheus || echo 'not installed')"
    echo "install-alerting: alertmanager: $(alertmanager_binary)"
}

if command -v promtool >/dev/null 2>&1 && alertmanager_binary >/dev/null; then
    report
    exit 0
fi

packages=()
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
alertmanager_binary >/dev/null || packages+=(prometheus-alertmanager)

# Services a package may start, with the name of their process.
declare -A daemons=([prometheus]=prometheus [prometheus-alertmanager]=prometheus-alertmanager)

own_policy=0
restore_policy() {
    if [ "$own_policy" = 1 ]; then as_root rm -f "$POLICY"; fi
}
trap restore_policy EXIT
if [ ! -e "$POLICY" ]; then
    # Exit status 101 is "action forbidden": invoke-rc.d and deb-systemd-invoke start nothing.
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$POLICY" >/dev/null
    as_root chmod 755 "$POLICY"
    own_policy=1
fi

echo "install-alerting: installing Debian's ${packages[*]} (log: $LOG_FILE)"
if ! apt_install "${packages[@]}" >"$LOG_FILE" 2>&1; then
    echo "install-alerting: apt-get failed; last log lines:" >&2
    tail -n 20 "$LOG_FILE" >&2 || true
    exit 1
fi
restore_policy
own_policy=0

# Belt and braces, for a host whose policy-rc.d allows starts: stop what the postinst started,
# through the service manager that started it, and keep it from coming back at boot.
for package in "${packages[@]}"; do
    service="$package"
    if pgrep -x "${daemons[$package]}" >/dev/null 2>&1; then
        echo "install-alerting: the package started $service; stopping it"
        if [ -d /run/systemd/system ]; then
            as_root systemctl stop "$service" || true
            as_root systemctl disable --quiet "$service" || true
        elif [ -x "/etc/init.d/$service" ]; then
            as_root "/etc/init.d/$service" stop >/dev/null || true
        fi
        if pgrep -x "${daemons[$package]}" >/dev/null 2>&1; then
            echo "install-alerting: $service is still running; stop it before the tests" >&2
            exit 1
        fi
    fi
done

report
