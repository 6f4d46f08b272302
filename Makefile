# One-line commands for the project's habits. buf runs through scripts/buf,
# at the version pinned in tools/buf/go.mod.
BUF := scripts/buf

.PHONY: all build test generate lint breaking check-generated fmt vet ci bench

all: build test

build:
	go build -o bin/listenerd ./daemon
	go build -o bin/ctl ./ctl

test:
	go test -race -count=1 ./...

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
