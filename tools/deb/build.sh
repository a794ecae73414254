#!/usr/bin/env bash
# Builds bbal's Debian package with plain dpkg-deb, no debhelper:
#   tools/deb/build.sh [OUTDIR]     (make deb; OUTDIR is dist by default)
# writes OUTDIR/bbal_VERSION_ARCH.deb and prints its path. It holds
# /usr/sbin/bbal and /usr/sbin/balstat (balstat is an administrator's
# tool: it needs the debug socket, mode 0600, so root or the bbal user),
# their manual pages, the systemd unit, /etc/default/bbal (a conffile),
# and the copyright and changelog; the maintainer scripts beside this
# file create the user bbal and enable the unit.
#
# Environment: GO (go), DEB_VERSION (by default from git: the tag vX.Y.Z
# as X.Y.Z, with +gitN.gHASH after it for N commits since; without a tag
# 0~gitYYYYMMDD.HASH, the commit's date; +dirty for uncommitted changes),
# DEB_MAINTAINER, SOURCE_DATE_EPOCH (the commit's time: the files' dates).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-dist}
GO=${GO:-go}
here=tools/deb

dirty=
git diff --quiet HEAD 2>/dev/null || dirty=+dirty
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
if [ -z "${DEB_VERSION:-}" ]; then
	if tag=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
		DEB_VERSION=$(echo "${tag#v}" | sed -E 's/-([0-9]+)-g([0-9a-f]+)$/+git\1.g\2/; s/-/~/g')$dirty
	else
		DEB_VERSION=0~git$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d).$(git rev-parse --short HEAD)$dirty
	fi
fi
maintainer=${DEB_MAINTAINER:-"bbal maintainers <bbal@example.org>"}
# Go's names for amd64, arm64, ppc64le, s390x, riscv64 are Debian's too.
arch=$($GO env GOARCH)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
install -d "$root/DEBIAN" "$root/usr/sbin" "$root/usr/share/man/man8" \
	"$root/lib/systemd/system" "$root/etc/default" "$root/usr/share/doc/bbal" \
	"$root/usr/share/lintian/overrides"

# Statically linked (no cgo: os/user reads /etc/passwd itself, enough
# for -u with a system user), position-independent, without symbols.
ldflags="-s -w -X github.com/bbal/bbal/cmd/internal/debugapi.version=$(git describe --always --dirty 2>/dev/null || echo "$DEB_VERSION")"
for cmd in bbal balstat; do
	CGO_ENABLED=0 $GO build -trimpath -buildmode=pie -ldflags "$ldflags" -o "$root/usr/sbin/$cmd" "./cmd/$cmd"
	gzip -9n <"tools/man/$cmd.8" >"$root/usr/share/man/man8/$cmd.8.gz"
done
install -m 0644 tools/deploy/bbal.service "$root/lib/systemd/system/bbal.service"
install -m 0644 tools/deploy/bbal.default "$root/etc/default/bbal"
install -m 0644 "$here/lintian-overrides" "$root/usr/share/lintian/overrides/bbal"
sed "s|@MAINTAINER@|$maintainer|" "$here/copyright" >"$root/usr/share/doc/bbal/copyright"
# A native package's changelog, one entry for this build.
{
	echo "bbal ($DEB_VERSION) unstable; urgency=medium"
	echo
	echo "  * Built from commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)${dirty:+ with uncommitted changes}."
	echo
	echo " -- $maintainer  $(date -R -u -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$root/usr/share/doc/bbal/changelog.gz"

install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$root/DEBIAN/"
install -m 0644 "$here/conffiles" "$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
	grep -vxF -f <(sed 's|^/||' DEBIAN/conffiles) | xargs md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@VERSION@|$DEB_VERSION|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
	-e "s|@SIZE@|$size|" "$here/control" >"$root/DEBIAN/control"

find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$out"
deb=$out/bbal_${DEB_VERSION}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
