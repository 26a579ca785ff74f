# hack/vm's functions for scenarios (sourced before /mnt/share/scenario inside the VM; see
# hack/vm-test --help). Results go to $VM_OUT/checks, one line per check:
#   ok<TAB>NAME<TAB>DETAIL   or   FAIL<TAB>NAME<TAB>DETAIL
# which hack/vm-test prints on the host. NAMEs should be unique within a scenario.

# A boot is under way: the marker of an earlier vm_reboot is stale now (the runner may have been
# stopped by the shutdown before it could remove it; then the scenario's end would look like a reboot).
rm -f "$VM_OUT/.rebooting"

# The binaries run from a copy in /run: executing them from the 9p share pages them in a few KiB
# at a time (tens of seconds per command under emulation).
if [[ -d "$VM_SHARE/bin" ]]; then
  mkdir -p /run/skiff-vm/bin
  cp "$VM_SHARE/bin/"* /run/skiff-vm/bin/
  VM_BIN=/run/skiff-vm/bin
fi

# ok NAME [DETAIL] / fail NAME DETAIL: record a check's result.
ok() { printf 'ok\t%s\t%s\n' "$1" "$(_oneline "${2:-}")" >>"$VM_OUT/checks"; }
fail() { printf 'FAIL\t%s\t%s\n' "$1" "$(_oneline "${2:-}")" >>"$VM_OUT/checks"; }
_oneline() { printf '%s' "$1" | tr '\t\n' '  ' | sed -e 's/^ *//' -e 's/ *$//'; }

# check NAME CMD...: runs CMD; ok when it exits 0, else FAIL with the end of its output.
check() {
  local name=$1 outp rc=0 t0=$SECONDS
  shift
  outp=$("$@" 2>&1) || rc=$?
  printf '== check %s: %s (status %d, %ds)\n%s\n' "$name" "$*" "$rc" "$((SECONDS - t0))" "$outp" >&2
  if ((rc == 0)); then ok "$name" "$(tail -n 1 <<<"$outp" | cut -c1-200)"; else fail "$name" "status $rc: $(tail -n 3 <<<"$outp" | cut -c1-300)"; fi
  return "$rc"
}

# check_eq NAME WANT CMD...: ok when CMD's output (trimmed) is WANT.
check_eq() {
  local name=$1 want=$2 got
  shift 2
  got=$("$@" 2>&1) || true
  got=$(echo "$got" | sed -e 's/[[:space:]]*$//')
  printf '== check %s: %s -> %s (want %s)\n' "$name" "$*" "$got" "$want" >&2
  if [[ "$got" == "$want" ]]; then ok "$name" "$got"; else fail "$name" "got '$got', want '$want'"; return 1; fi
}

# wait_until SECONDS CMD...: runs CMD every second until it exits 0 (returns 0) or SECONDS pass
# (returns 1). Quiet.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  while ! "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

# save NAME CMD...: CMD's stdout and stderr into $VM_OUT/files/NAME (for the host to read);
# returns CMD's status.
save() {
  local name=$1 rc=0
  shift
  mkdir -p "$VM_OUT/files"
  "$@" >"$VM_OUT/files/$name" 2>&1 || rc=$?
  return "$rc"
}

# note TEXT: a line in the scenario's log (and on the console).
note() { echo "-- $*" >&2; echo "vm: $*" >/dev/console; }

# stamp NAME: records the seconds since the kernel started ($VM_OUT/times: NAME SECONDS).
stamp() { local up _; read -r up _ </proc/uptime; echo "$1 $up" >>"$VM_OUT/times"; }

# vm_reboot: a clean reboot; the scenario runs again with VM_BOOT+1.
vm_reboot() {
  : >"$VM_OUT/.rebooting"
  note "clean reboot"
  systemctl reboot
  exit 0
}

# vm_reset: a hard reset now (sysrq b: no sync, no unmount, like a power cut of the disk's
# cache aside); the scenario runs again with VM_BOOT+1.
vm_reset() {
  note "hard reset (sysrq b)"
  echo 1 >/proc/sys/kernel/sysrq
  echo b >/proc/sysrq-trigger
  sleep 60
}

# skiff_install: hack/install --enable from the binaries in the share.
skiff_install() { "$VM_REPO/hack/install" --enable --from "$VM_BIN"; }

# skiff_converged: true when every service of `skiff status --json` runs all its replicas.
skiff_converged() {
  local s
  s=$(skiff status --json 2>/dev/null) || return 1
  jq -e '(.services | length) > 0 and all(.services[]; .running_replicas == .desired_replicas and .desired_replicas > 0)' <<<"$s" >/dev/null
}

# unit_ready: the skiff unit is active and running (for Type=notify: READY=1 was seen) and
# systemd never restarted it.
unit_state() { systemctl show -p Type,ActiveState,SubState,NRestarts skiff.service | sort | paste -sd' '; }
