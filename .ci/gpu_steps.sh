# The step runner of .ci/gpu_check.sh (sourced): `step` runs one step under its timeout and
# records it in $WORK/steps.tsv; `step_left` runs one in the time the budgeted steps left unused;
# `finish` packs the logs into $OUT and prints the budget table.
# Reads REHEARSE, DRY, WORK, OUT, DEVICE_LIMIT_S and start (SECONDS at the first step) from the caller.

STEP_NAMES=()
declare -A STEP_BUDGET STEP_STATUS STEP_SECS STEP_LABEL  # label: a budget as the table shows it

# step NAME DEVICE_BUDGET_S REHEARSAL_CAP_S COMMAND: the command in its own bash under a timeout
# (the device budget on the device, the rehearsal cap on CPU); its output to $WORK/logs/NAME.log,
# the log's tail here.
step() {
  local name=$1 budget=$2 cap=$3 cmd=$4
  local limit=$budget
  [ "$REHEARSE" = 1 ] && limit=$cap
  STEP_NAMES+=("$name")
  STEP_BUDGET[$name]=$budget
  STEP_LABEL[$name]="$budget s"
  echo "gpu-check: [$name] (device budget $budget s) $cmd"
  _run_step "$name" "$limit" "$budget" "$cmd"
}

# step_left NAME MIN_S RESERVE_S REHEARSAL_CAP_S COMMAND: a step with no budget of its own. On the
# device it gets what the budgeted steps before it left unused: DEVICE_LIMIT_S less the time spent
# and less RESERVE_S (the budgets of the steps after it); with under MIN_S left it is recorded as
# skipped, which fails nothing. The command reads its limit as $STEP_LIMIT (for inner timeouts:
# `$((STEP_LIMIT - SECONDS))` is what it has left). Its budget counts 0 in the sum.
step_left() {
  local name=$1 min=$2 reserve=$3 cap=$4 cmd=$5
  local limit=$((DEVICE_LIMIT_S - (SECONDS - ${start:-0}) - reserve))
  [ "$REHEARSE" = 1 ] && limit=$cap
  STEP_NAMES+=("$name")
  STEP_BUDGET[$name]=0
  STEP_LABEL[$name]="time left >= $min s"
  echo "gpu-check: [$name] (device budget: the time left, at least $min s) $cmd"
  if [ "$DRY" != 1 ] && [ "$limit" -lt "$min" ]; then
    STEP_STATUS[$name]="skipped ($limit s left)"
    STEP_SECS[$name]=0
    echo "gpu-check: [$name] skipped: $limit s left before the device limit, it needs $min s"
    printf '%s\t%s\t%s\t%s\n' "$name" "${STEP_STATUS[$name]}" 0 left >>"$WORK/steps.tsv"
    return 0
  fi
  _run_step "$name" "$limit" left "$cmd"
}

# _run_step NAME LIMIT_S BUDGET COMMAND: the command under its limit, its log and status.
_run_step() {
  local name=$1 limit=$2 budget=$3 cmd=$4
  if [ "$DRY" = 1 ]; then
    STEP_STATUS[$name]=dry
    STEP_SECS[$name]=0
    return 0
  fi
  local t0=$SECONDS rc
  STEP_LIMIT=$limit timeout -k 10 "$limit" bash -o pipefail -c "$cmd" >"$WORK/logs/$name.log" 2>&1
  rc=$?
  STEP_SECS[$name]=$((SECONDS - t0))
  case $rc in
    0) STEP_STATUS[$name]=ok ;;
    124 | 137) STEP_STATUS[$name]="timeout ($limit s)" ;;
    *) STEP_STATUS[$name]="failed (exit $rc)" ;;
  esac
  tail -n 6 "$WORK/logs/$name.log" | cut -c1-200 | sed "s/^/  [$name] /"
  echo "gpu-check: [$name] ${STEP_STATUS[$name]} in ${STEP_SECS[$name]} s"
  printf '%s\t%s\t%s\t%s\n' "$name" "${STEP_STATUS[$name]}" "${STEP_SECS[$name]}" "$budget" >>"$WORK/steps.tsv"
}

# finish: the budget table, logs.tar.gz, the file count of $OUT; exit 1 if a step failed, the
# budgets exceed one device command, or $OUT holds more than 8 files.
finish() {
  local total=0 failed=0 name
  printf '%-10s %-22s %10s %16s\n' step status "this run s" "device budget"
  for name in "${STEP_NAMES[@]}"; do
    total=$((total + STEP_BUDGET[$name]))
    case ${STEP_STATUS[$name]} in ok | dry | skipped*) ;; *) failed=$((failed + 1)) ;; esac
    printf '%-10s %-22s %10s %16s\n' "$name" "${STEP_STATUS[$name]}" "${STEP_SECS[$name]}" "${STEP_LABEL[$name]}"
  done
  echo "gpu-check: projected device time at most $total s ($((total / 60)) min $((total % 60)) s: the sum of the step timeouts; a step on the time left never passes the limit), limit $DEVICE_LIMIT_S s"
  [ "$DRY" = 1 ] && return 0
  {
    echo
    echo "steps (this run's seconds; device budgets, their sum $total s):"
    for name in "${STEP_NAMES[@]}"; do
      echo "  $name: ${STEP_STATUS[$name]} in ${STEP_SECS[$name]} s (budget ${STEP_LABEL[$name]})"
    done
    echo "gpu-check: $failed step(s) failed; this run took $SECONDS s"
  } >>"$OUT/summary.txt"
  mkdir -p runs/profile
  tar czf "$OUT/logs.tar.gz" -C "$WORK" logs steps.tsv $(cd "$WORK" && ls checks.jsonl 2>/dev/null) \
    -C "$ROOT/runs" profile
  if [ "$(stat -c %s "$OUT/logs.tar.gz")" -gt $((15 * 2**20)) ]; then  # 16 MiB per file come back
    echo "gpu-check: logs.tar.gz over 15 MiB: packed again without the profiler traces"
    tar czf "$OUT/logs.tar.gz" -C "$WORK" logs steps.tsv $(cd "$WORK" && ls checks.jsonl 2>/dev/null)
  fi
  local files
  files=$(find "$OUT" -type f | wc -l)
  echo "gpu-check: $files file(s) in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
  local bad=0
  [ "$total" -le "$DEVICE_LIMIT_S" ] || { echo "gpu-check: FAILED: the budgets ($total s) exceed $DEVICE_LIMIT_S s"; bad=1; }
  [ "$files" -le 8 ] || { echo "gpu-check: FAILED: more than 8 files in $OUT (only 8 come back)"; bad=1; }
  [ "$failed" = 0 ] || { echo "gpu-check: FAILED: $failed step(s); logs in $OUT/logs.tar.gz"; bad=1; }
  [ "$bad" = 0 ] && echo "gpu-check: passed in $SECONDS s"
  exit "$bad"
}
