# dkms-hook — build, test and install. This file is the one home of install
# paths; debian/rules calls it.

CARGO   ?= cargo
PREFIX  ?= /usr
DESTDIR ?=
CARGOFLAGS ?= --locked

BIN := target/release/dkms-hook

.PHONY: all build check test e2e bench install clean

all: build

build:
	$(CARGO) build --release $(CARGOFLAGS)

# The test command of the README and of CI.
check test:
	$(CARGO) test $(CARGOFLAGS)

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/sbin/dkms-hook
	install -D -m 0644 etc/dkms-hook.conf $(DESTDIR)/etc/dkms/dkms-hook.conf

clean:
	$(CARGO) clean
