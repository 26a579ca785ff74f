# Static musl cross builds, shared by hack/release and hack/test-cross (sourced, not run).
#
# Architectures (the names hack/release takes): x86_64, aarch64, armv7. For each:
#   cross_triple ARCH        the Rust target triple
#   cross_libseccomp ARCH    builds libseccomp.a for it (cached under target/libseccomp/), prints
#                            the directory holding it
#   cross_env ARCH           exports the linker, the C compiler and libseccomp-sys's variables
#                            for that target, and sets CROSS_CARGO (an array: the cargo command
#                            line up to the subcommand) and CROSS_TRIPLE
#   cross_qemu ARCH          the qemu-user command that runs its binaries (empty for x86_64)
#
# What they need (hack/setup installs it): the cross gcc of arm64 and armhf, musl-dev of amd64,
# arm64 and armhf (dpkg --add-architecture), dpkg-dev, qemu-user-static, and the rustup targets
# (armv7 has no prebuilt std for this host: nightly's rust-src and -Zbuild-std).
#
# libseccomp is Debian bookworm's source package, the version the host's libseccomp-dev is, from
# deb.debian.org's pool (snapshot.debian.org when the pool has moved on), checked against the
# SHA-256 sums below. Those sums were read from bookworm's Sources index, whose hash is in the
# InRelease file signed by the Debian stable release key (gpgv with debian-archive-keyring):
# the same chain apt-get source follows, without adding a deb-src line to this machine's apt.

CROSS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CROSS_NIGHTLY=${SKIFF_CROSS_NIGHTLY:-nightly}

LIBSECCOMP_VERSION=2.5.4-1+deb12u1
LIBSECCOMP_UPSTREAM=2.5.4
LIBSECCOMP_POOL=pool/main/libs/libseccomp
LIBSECCOMP_MIRRORS=(
  https://deb.debian.org/debian
  https://snapshot.debian.org/archive/debian/20250520T000000Z
)
LIBSECCOMP_FILES=(
  "0ab1448c7206ee928f97a24d04300cfd3bb26babb4238c82fb71f507b5148595 libseccomp_2.5.4-1+deb12u1.dsc"
  "d82902400405cf0068574ef3dc1fe5f5926207543ba1ae6f8e7a1576351dcbdb libseccomp_2.5.4.orig.tar.gz"
  "af37e70eb422e6f983c1f135a3abb342c3b787716520b71bd774e4906003807f libseccomp_2.5.4.orig.tar.gz.asc"
  "665fc6ad1b9887207b0af1a293a2d7975e2df503a2618d1808b970081f9672f6 libseccomp_2.5.4-1+deb12u1.debian.tar.xz"
)

cross_die() {
  echo "${CROSS_PROG:-hack/cross.sh}: $*" >&2
  exit 1
}

cross_triple() {
  case "$1" in
    x86_64) echo x86_64-unknown-linux-musl ;;
    aarch64) echo aarch64-unknown-linux-musl ;;
    armv7) echo armv7-unknown-linux-musleabihf ;;
    *) return 1 ;;
  esac
}

# The GNU triple of the cross gcc and binutils, and Debian's multiarch name of musl-dev's files.
cross_gnu() {
  case "$1" in
    x86_64) echo x86_64-linux-gnu ;;
    aarch64) echo aarch64-linux-gnu ;;
    armv7) echo arm-linux-gnueabihf ;;
  esac
}
cross_musl_dir() {
  case "$1" in
    x86_64) echo x86_64-linux-musl ;;
    aarch64) echo aarch64-linux-musl ;;
    armv7) echo arm-linux-musleabihf ;;
  esac
}

cross_qemu() {
  case "$1" in
    aarch64) echo qemu-aarch64-static ;;
    armv7) echo qemu-arm-static ;;
    *) echo "" ;;
  esac
}

# The cross C compiler with Debian's musl specs: musl's headers, crt files and libc.a.
cross_cc() {
  local specs="/usr/lib/$(cross_musl_dir "$1")/musl-gcc.specs"
  [[ -f "$specs" ]] || cross_die "$specs is missing: run hack/setup (musl-dev of $1)"
  command -v "$(cross_gnu "$1")-gcc" >/dev/null || cross_die "$(cross_gnu "$1")-gcc is missing: run hack/setup"
  echo "$(cross_gnu "$1")-gcc -specs=$specs"
}

# The kernel's UAPI headers (linux/, asm/, asm-generic/) of ARCH, alone in a directory: musl's
# specs drop /usr/include, and glibc's headers must not mix with musl's.
cross_kernel_headers() {
  local arch=$1 dir src
  dir="$CROSS_ROOT/target/libseccomp/kernel-headers-$arch"
  if [[ "$arch" == x86_64 ]]; then
    src=(/usr/include/linux /usr/include/x86_64-linux-gnu/asm /usr/include/asm-generic)
  else
    src=("/usr/$(cross_gnu "$arch")/include/linux" "/usr/$(cross_gnu "$arch")/include/asm"
      "/usr/$(cross_gnu "$arch")/include/asm-generic")
  fi
  for s in "${src[@]}"; do
    [[ -d "$s" ]] || cross_die "$s is missing: run hack/setup (the kernel headers of $arch)"
  done
  if [[ ! -d "$dir" ]]; then
    mkdir -p "$dir.tmp"
    ln -sfn "${src[@]}" "$dir.tmp/"
    mv -T "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

cross_fetch_libseccomp() {
  local dir=$1 line sum name url ok
  mkdir -p "$dir"
  for line in "${LIBSECCOMP_FILES[@]}"; do
    read -r sum name <<<"$line"
    if [[ -f "$dir/$name" ]] && echo "$sum  $dir/$name" | sha256sum --quiet -c - 2>/dev/null; then
      continue
    fi
    ok=0
    for url in "${LIBSECCOMP_MIRRORS[@]}"; do
      if curl -fsSL --retry 2 -o "$dir/$name.part" "$url/$LIBSECCOMP_POOL/$name" &&
        echo "$sum  $dir/$name.part" | sha256sum --quiet -c - 2>/dev/null; then
        mv -f "$dir/$name.part" "$dir/$name"
        ok=1
        break
      fi
    done
    rm -f "$dir/$name.part"
    ((ok)) || cross_die "cannot fetch $name with SHA-256 $sum (from ${LIBSECCOMP_MIRRORS[*]})"
  done
}

# Builds libseccomp.a for ARCH once: target/libseccomp/VERSION/TRIPLE/libseccomp.a.
cross_libseccomp() {
  local arch=$1 triple base out src build cc log
  triple=$(cross_triple "$arch") || cross_die "unknown architecture $arch"
  base="$CROSS_ROOT/target/libseccomp/$LIBSECCOMP_VERSION"
  out="$base/$triple"
  if [[ -f "$out/libseccomp.a" ]]; then
    echo "$out"
    return
  fi
  cc=$(cross_cc "$arch")
  src="$base/src/libseccomp-$LIBSECCOMP_UPSTREAM"
  if [[ ! -f "$src/.unpacked" ]]; then
    cross_fetch_libseccomp "$base/download"
    rm -rf "$base/src"
    mkdir -p "$base/src"
    # dpkg-source checks the tarballs against the .dsc's sums and applies Debian's patches (it
    # cannot check the maintainer's signature without debian-keyring: the sums above vouch).
    if ! (cd "$base/src" && dpkg-source -x "$base/download/libseccomp_$LIBSECCOMP_VERSION.dsc" \
      "libseccomp-$LIBSECCOMP_UPSTREAM") >"$base/dpkg-source.log" 2>&1; then
      cat "$base/dpkg-source.log" >&2
      cross_die "dpkg-source -x of libseccomp failed"
    fi
    touch "$src/.unpacked"
  fi
  build="$base/build-$triple"
  rm -rf "$build" "$out.tmp"
  mkdir -p "$build" "$out.tmp"
  log="$build/build.log"
  echo "==> libseccomp $LIBSECCOMP_VERSION for $triple (static, musl)" >&2
  if ! (cd "$build" && "$src/configure" --host="$(cross_gnu "$arch")" CC="$cc" \
    CPPFLAGS="-isystem $(cross_kernel_headers "$arch")" \
    AR="$(cross_gnu "$arch")-ar" RANLIB="$(cross_gnu "$arch")-ranlib" \
    --enable-static --disable-shared --disable-python --prefix=/usr &&
    make -C src -j"$(nproc)" libseccomp.la) >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    cross_die "building libseccomp for $triple failed (log: $log)"
  fi
  cp "$build/src/.libs/libseccomp.a" "$out.tmp/libseccomp.a"
  rm -rf "$out"
  mv "$out.tmp" "$out"
  rm -rf "$build"
  echo "$out"
}

# Sets the environment and CROSS_CARGO for building ARCH's static binaries.
cross_env() {
  local arch=$1 triple var lib
  triple=$(cross_triple "$arch") || cross_die "unknown architecture $arch (x86_64, aarch64, armv7)"
  CROSS_TRIPLE=$triple
  var=$(echo "$triple" | tr 'a-z-' 'A-Z_')
  lib=$(cross_libseccomp "$arch")
  export LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="$lib"
  # The cross gcc links (as a driver only: Rust brings musl's crt files and libc.a for the
  # targets rustup ships; Debian's musl-dev for armv7, see below).
  if [[ "$arch" != x86_64 ]]; then
    export "CARGO_TARGET_${var}_LINKER=$(cross_gnu "$arch")-gcc"
  fi
  export "CC_${triple//-/_}=$(cross_cc "$arch")"
  if [[ "$arch" == armv7 ]]; then
    # No prebuilt std for this target on x86_64 hosts: nightly builds it from rust-src. Without
    # the self-contained crt files and libc.a of a rustup target, the link takes Debian's musl
    # (musl-dev:armhf, the specs file) and gcc's unwinder (libgcc_eh, as libunwind.a).
    local unwind="$CROSS_ROOT/target/libseccomp/$LIBSECCOMP_VERSION/$triple-unwind"
    if [[ ! -e "$unwind/libunwind.a" ]]; then
      mkdir -p "$unwind"
      ln -sf "$("$(cross_gnu "$arch")-gcc" -print-file-name=libgcc_eh.a)" "$unwind/libunwind.a"
    fi
    export "CARGO_TARGET_${var}_RUSTFLAGS=-C link-self-contained=no -C link-arg=-specs=/usr/lib/$(cross_musl_dir "$arch")/musl-gcc.specs -L native=$unwind"
    CROSS_CARGO=(cargo "+$CROSS_NIGHTLY")
    CROSS_BUILD_STD=(-Zbuild-std=std,panic_abort)
  else
    CROSS_CARGO=(cargo)
    CROSS_BUILD_STD=()
  fi
  local q
  q=$(cross_qemu "$arch")
  if [[ -n "$q" ]]; then
    export "CARGO_TARGET_${var}_RUNNER=$q"
  fi
}
