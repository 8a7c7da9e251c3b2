# Shared by scripts/test, scripts/demo and scripts/bench. Source it; it defines functions and variables only.
# shellcheck shell=bash

SAGA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SAGA_BUILD="${SAGA_BUILD_DIR:-$SAGA_ROOT/build}"
SAGA_PACKAGES=(cmake g++ make pkg-config libpqxx-dev libpq-dev librdkafka-dev libcereal-dev rapidjson-dev libboost-dev
               libboost-system-dev libgtest-dev libgmock-dev libssl-dev postgresql postgresql-client)

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# Installs the Debian packages that are missing, in one apt-get call; does nothing when all are there.
saga_install_packages() {
  local missing=() p
  for p in "${SAGA_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing missing packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Configures and builds into $SAGA_BUILD with the given extra CMake arguments.
saga_build() {
  say "building in $SAGA_BUILD"
  cmake -S "$SAGA_ROOT" -B "$SAGA_BUILD" -DCMAKE_BUILD_TYPE="${SAGA_BUILD_TYPE:-RelWithDebInfo}" "$@" >/dev/null
  cmake --build "$SAGA_BUILD" -j"$(nproc)"
}
