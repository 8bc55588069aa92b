#!/bin/sh
# Runs the cargo-fuzz (libFuzzer) targets of fuzz/ one after another, each
# for FUZZ_SECONDS seconds, single-process, starting from the committed
# seeds in fuzz/corpus/<target>.  What a run adds to the corpus goes to
# fuzz/.work/corpus/<target> (not committed), crashes to
# fuzz/artifacts/<target>/.  Exits non-zero if any target crashed, hung or
# failed to build, naming each reproducer and how to rerun it.
#
# usage: scripts/fuzz.sh [target ...]   (default: every target)
# env:   FUZZ_SECONDS (30), CARGO (cargo), FUZZ_TOOLCHAIN (nightly)
set -eu
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
SECONDS_EACH=${FUZZ_SECONDS:-30}
TOOLCHAIN=${FUZZ_TOOLCHAIN:-nightly}

# A fresh machine: the nightly toolchain, then cargo-fuzz.
if ! $CARGO +"$TOOLCHAIN" --version >/dev/null 2>&1; then
	echo "make fuzz: no '$TOOLCHAIN' Rust toolchain: cargo-fuzz needs nightly (-Zsanitizer)."
	if command -v rustup >/dev/null 2>&1; then
		echo "make fuzz: rustup toolchain install $TOOLCHAIN --profile minimal (needs network)"
		rustup toolchain install "$TOOLCHAIN" --profile minimal || {
			echo "make fuzz: FAILED: could not install the $TOOLCHAIN toolchain; install it by hand" \
				"(rustup toolchain install $TOOLCHAIN) and rerun."
			exit 1
		}
	else
		echo "make fuzz: FAILED: no rustup to install it with; install a nightly toolchain" \
			"and set FUZZ_TOOLCHAIN to its name."
		exit 1
	fi
fi
if ! $CARGO fuzz --version >/dev/null 2>&1; then
	echo "make fuzz: cargo install cargo-fuzz"
	$CARGO install --locked cargo-fuzz
fi

TARGETS=${*:-$(ls fuzz/fuzz_targets | sed -n 's/\.rs$//p')}
# Absolute: a target may change its directory (config does).
ROOT=$(pwd)
echo "make fuzz: building $(echo $TARGETS | wc -w) targets (debug assertions and overflow checks on)"
(cd fuzz && $CARGO +"$TOOLCHAIN" fuzz build -a) || {
	echo "make fuzz: FAILED: the fuzz targets do not build"
	exit 1
}

failed=""
summary=""
for t in $TARGETS; do
	work=fuzz/.work/corpus/$t
	mkdir -p "$work" "fuzz/artifacts/$t"
	log=fuzz/.work/$t.log
	echo "make fuzz: $t for ${SECONDS_EACH}s"
	# -timeout: an input that runs 10 s is a hang; -rss_limit_mb: one
	# that makes the process take 2 GiB is a bug too.
	if (cd fuzz && $CARGO +"$TOOLCHAIN" fuzz run -a "$t" "$ROOT/$work" "$ROOT/fuzz/corpus/$t" -- \
		-max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1) >"$log" 2>&1; then
		status=ok
	else
		status=FAILED
		failed="$failed $t"
	fi
	# libFuzzer's last status line: executions, coverage, corpus, exec/s.
	done_line=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
	speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
	cov=$(echo "$done_line" | sed -n 's/.* cov: \([0-9]*\).* ft: \([0-9]*\).*/cov \1 ft \2/p')
	line="$t: $status, ${SECONDS_EACH}s, ${runs:-?} runs, ${speed:-?} exec/s, ${cov:-cov ?}"
	echo "make fuzz: $line"
	summary="$summary
  $line"
	if [ $status = FAILED ]; then
		grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written|Failing input' "$log" | head -n 8 | sed 's/^/    /'
		for a in $(sed -n 's/.*Test unit written to \([^ ]*\).*/\1/p' "$log"); do
			echo "    reproducer: $a"
			echo "    rerun:      (cd fuzz && $CARGO +$TOOLCHAIN fuzz run -a $t $a)"
		done
		echo "    full log:   $log"
	fi
done
echo "make fuzz: summary:$summary"
if [ -n "$failed" ]; then
	echo "make fuzz: FAILED:$failed"
	exit 1
fi
echo "make fuzz: no crashes"
