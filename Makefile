# dkms-hook — build, test and install. This file is the one home of install
# paths; debian/rules calls it.

CARGO   ?= cargo
PREFIX  ?= /usr
DESTDIR ?=
CARGOFLAGS ?= --locked

# Where cargo puts the binary: $CARGO_TARGET_DIR (else target/), and below
# it the target triple when the build names one (Debian's cargo wrapper
# builds with --target $(DEB_HOST_RUST_TYPE); debian/rules passes RUST_TARGET).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
RUST_TARGET ?=
BIN := $(TARGET_DIR)/$(if $(RUST_TARGET),$(RUST_TARGET)/)release/dkms-hook

.PHONY: all build check test bench install clean

all: build

build:
	$(CARGO) build --release $(CARGOFLAGS)

# The test command of the README and of CI. As root it also runs the tests
# marked `#[ignore = "needs root"]` (a tmpfs mount, the preflight's mount
# namespace); the textfile test runs where Debian's python3-prometheus-client
# is installed (CI installs it), and is named as skipped otherwise.
HAVE_PROM := $(shell /usr/bin/python3 -c 'import prometheus_client' 2>/dev/null && echo yes)
ROOT_TESTS := $(if $(filter 0,$(shell id -u)),--include-ignored $(if $(HAVE_PROM),,--skip the_prometheus_textfile_parses_and_counts))
check test:
	$(if $(HAVE_PROM),,@echo "make check: python3-prometheus-client missing: skipping the_prometheus_textfile_parses_and_counts")
	$(CARGO) test $(CARGOFLAGS) $(if $(ROOT_TESTS),-- $(ROOT_TESTS))

# Every installed path lives here; debian/rules runs `make install
# DESTDIR=debian/dkms-hook`. The man page and the bash completion are
# generated from the built binary.
SBINDIR   ?= $(PREFIX)/sbin
MANDIR    ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
SYSCONFDIR ?= /etc
# Where this Debian release's debhelper looks for units (/lib/systemd/system
# on Debian 12, /usr/lib/systemd/system on Debian 13), from systemd.pc
# (Debian 13: systemd-dev); `make install` stops when it cannot tell.
SYSTEMDUNITDIR ?= $(shell pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null)
GENDIR    := $(TARGET_DIR)/generated

install: build
	@test -n "$(SYSTEMDUNITDIR)" || { echo "make install: no systemd.pc (install systemd-dev, or pkg-config), or set SYSTEMDUNITDIR" >&2; exit 1; }
	mkdir -p $(GENDIR)
	$(BIN) man > $(GENDIR)/dkms-hook.8
	$(BIN) completions bash > $(GENDIR)/dkms-hook.bash
	install -D -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/dkms-hook
	install -D -m 0644 $(GENDIR)/dkms-hook.8 $(DESTDIR)$(MANDIR)/man8/dkms-hook.8
	install -D -m 0644 $(GENDIR)/dkms-hook.bash $(DESTDIR)$(BASHCOMPDIR)/dkms-hook
	install -D -m 0644 etc/dkms-hook.conf $(DESTDIR)$(SYSCONFDIR)/dkms/dkms-hook.conf
	install -D -m 0644 apt.conf.d/80dkms-hook $(DESTDIR)$(SYSCONFDIR)/apt/apt.conf.d/80dkms-hook
	install -D -m 0755 hooks/dkms-hook-preflight $(DESTDIR)$(SYSCONFDIR)/dkms/dkms-hook-preflight
	install -D -m 0644 systemd/dkms-hook.service $(DESTDIR)$(SYSTEMDUNITDIR)/dkms-hook.service
	install -D -m 0644 systemd/dkms-hook-retry.service $(DESTDIR)$(SYSTEMDUNITDIR)/dkms-hook-retry.service
	install -D -m 0644 systemd/dkms-hook-retry.timer $(DESTDIR)$(SYSTEMDUNITDIR)/dkms-hook-retry.timer
	install -D -m 0644 hooks/dpkg.cfg.d-dkms-hook $(DESTDIR)$(SYSCONFDIR)/dpkg/dpkg.cfg.d/dkms-hook
	install -D -m 0755 hooks/update-motd $(DESTDIR)$(SYSCONFDIR)/update-motd.d/90-dkms-hook
	for phase in header_postinst postinst prerm; do \
		install -D -m 0755 hooks/kernel-hook $(DESTDIR)$(SYSCONFDIR)/kernel/$$phase.d/dkms-hook || exit 1; \
	done
# The guard is named to sort before dkms's own "dkms" hook (see its comment).
	for phase in preinst postinst; do \
		install -D -m 0755 hooks/kernel-guard $(DESTDIR)$(SYSCONFDIR)/kernel/$$phase.d/00-dkms-hook-guard || exit 1; \
	done

# Benchmarks (docs/benchmarks.md); `make bench BENCHFLAGS=--short` is CI's smoke run.
bench:
	bash bench/run.sh $(BENCHFLAGS)

clean:
	$(CARGO) clean
