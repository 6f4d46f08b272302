# One-line commands for the project's habits. buf runs through scripts/buf,
# at the version pinned in tools/buf/go.mod.
BUF := scripts/buf

.PHONY: fuzz all build install test generate lint breaking check-generated fmt vet ci bench k8scheck

all: build test

build:
	go build -o bin/listenerd ./daemon
	go build -o bin/ctl ./ctl

# The binaries as listenerd and ctl in BINDIR: $GOBIN, else $GOPATH/bin
# (make install BINDIR=/usr/local/bin for another place).
BINDIR ?= $(or $(shell go env GOBIN),$(shell go env GOPATH)/bin)

install:
	go build -o "$(BINDIR)/listenerd" ./daemon
	go build -o "$(BINDIR)/ctl" ./ctl

test:
	go test -race -count=1 -timeout 30m ./...

generate:
	$(BUF) generate

lint:
	$(BUF) lint

breaking:
	$(BUF) breaking --against '.git#branch=main'

check-generated:
	scripts/check-generated

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	go vet ./...

ci:
	bash .ci/run

# contrib/kubernetes decoded strictly into the k8s.io/api types (a module of
# its own, tools/k8scheck, so listenerd's go.mod does not carry k8s.io/api).
k8scheck:
	cd tools/k8scheck && go run . ../../contrib/kubernetes

# The performance bench of issue 7 (BENCHMARKS.md): listenerd against a bare
# Go server and Node, side by side, medians and ratios. A full run takes
# about 6 minutes; BENCH_FLAGS=--quick is the smoke, e.g.
# make bench BENCH_FLAGS='--cases a,e --profile /tmp/prof'.
bench:
	go run ./internal/bench $(BENCH_FLAGS)

fuzz:
	go test -run '^$$' -fuzz '^FuzzCreateListenerRequest$$' -fuzztime 30s ./internal/service
	go test -run '^$$' -fuzz '^FuzzRecords$$' -fuzztime 30s ./internal/listener
	go test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 30s ./internal/state
