#!/usr/bin/env bash
# Benchmarks whose results go into BENCHMARKS.md. Usage: bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/out
echo "## go test -run xxx -bench AcquireToProvision -benchtime 2000x ./dispatcher/"
go test -run xxx -bench AcquireToProvision -benchtime 2000x ./dispatcher/ | grep Benchmark
echo
echo "## go run ./bench/daemon -jobs 5000 -seconds 20 (saturated: concurrent = 5000)"
CGO_ENABLED=0 go build -tags paasrunner_testexec -o bench/out/paas-runner ./cmd/paas-runner
go run ./bench/daemon -binary bench/out/paas-runner -jobs 5000 -seconds 20
echo "## go run ./bench/daemon -jobs 5000 -seconds 60 -executor test-dir-watch"
go run ./bench/daemon -binary bench/out/paas-runner -jobs 5000 -seconds 60 -executor test-dir-watch

echo
echo "## go test -run xxx -bench ProvisionLaunch -benchtime 20x ./executors/localdocker/"
./.ci/docker-up.sh
go test -run xxx -bench ProvisionLaunch -benchtime 20x ./executors/localdocker/ | grep Benchmark
echo
echo "## go test -run xxx -bench DecommissionLag -benchtime 20x ./cmd/paas-runner/"
go test -run xxx -bench DecommissionLag -benchtime 20x ./cmd/paas-runner/ | grep Benchmark
echo
echo "## go test -run xxx -bench JobStartToFirstLine -benchtime 10x ./cmd/paas-runner/"
go test -run xxx -bench JobStartToFirstLine -benchtime 10x ./cmd/paas-runner/ | grep Benchmark
echo
echo "## go test -run xxx -bench Trace50MB -benchtime 3x ./jobrunner/"
go test -run xxx -bench Trace50MB -benchtime 3x ./jobrunner/ | grep Benchmark
echo
echo "## go test -run xxx -bench 'Waiters100/shared' -benchtime 5x ./pipeguard/"
go test -run xxx -bench 'Waiters100/shared' -benchtime 5x ./pipeguard/ | grep Benchmark
go test -run xxx -bench 'Waiters100/per-job' -benchtime 1x ./pipeguard/ | grep Benchmark
echo
echo "## go test -run xxx -bench GrantAfterRelease -benchtime 200x ./guard/"
go test -run xxx -bench GrantAfterRelease -benchtime 200x ./guard/ 2>/dev/null | grep Benchmark
echo
# Under load, end to end: the real daemon (static bin/paas-runner) with
# local-docker, N jobs queued at once, concurrent = N. LOAD_JOBS="1 20 50"
# to choose N (50 is heavy on a 2-core machine).
make build >/dev/null
for n in ${LOAD_JOBS:-1 20}; do
  echo "## go run ./bench/load -binary bin/paas-runner -jobs $n"
  go run ./bench/load -binary bin/paas-runner -jobs "$n"
done
